"""`foundry-fleet nomad render`: the jobs a fleet on the nomad runtime submits, from its configuration
and records, and the files of deploy/nomad/ kept equal to what the code renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.wiring import nomad_jobs
from foundry_fleet.services.init import init_fleet
from foundry_fleet.wiring import runtimes
from tests.support.cli import run_main
from tests.support.releases import make_release_zip

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def nomad_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """[runtime] driver = "nomad" must name a registered driver; none of these tests starts one."""
    if "nomad" not in runtimes.RUNTIMES:
        monkeypatch.setitem(runtimes.RUNTIMES, "nomad", runtimes.RUNTIMES["local"])  # asked for free ports only


def test_the_committed_deploy_files_are_what_the_code_renders_now() -> None:
    rendered = nomad_jobs.render_deploy_files()
    assert set(rendered) == {"fvtt-provision.nomad.hcl", "caddy.nomad.hcl"}
    for name, text in rendered.items():
        committed = (REPO / "deploy" / "nomad" / name).read_text()
        assert committed == text, f"deploy/nomad/{name} is stale: run `foundry-fleet nomad render --write-deploy deploy/nomad`"


def test_write_deploy_writes_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(monkeypatch, capsys, "nomad", "render", "--write-deploy", str(tmp_path / "d"))
    assert code == 0 and "caddy.nomad.hcl" in out.replace("\n", "")  # a long path wraps at the terminal's width
    assert (tmp_path / "d" / "fvtt-provision.nomad.hcl").read_text() == \
        nomad_jobs.render_deploy_files()["fvtt-provision.nomad.hcl"]


def test_the_fleets_own_jobs_follow_its_configuration(tmp_path: Path, nomad_registered: None,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = init_fleet(tmp_path / "f", runtime="nomad", nomad_address="http://127.0.0.1:4646")
    path.write_text(path.read_text().replace('namespace = "default"', 'namespace = "games"'))
    code, out, err = run_main(monkeypatch, capsys, "--config", str(path), "nomad", "render", "--format", "json")
    assert code == 0, err
    job = json.loads(out)["Job"]  # one job: the body `nomad job run -json` and PUT /v1/jobs take
    assert job["ID"] == "fvtt-provision" and job["Namespace"] == "games"
    assert job["TaskGroups"][0]["Tasks"][0]["Config"]["args"][5] == str(path.resolve())
    assert job["Meta"]["fvtt_fleet"] == runtimes.fleet_id(load_config(path))

    path.write_text(path.read_text().replace("# on_nomad = false", "on_nomad = true"))
    code, out, err = run_main(monkeypatch, capsys, "--config", str(path), "nomad", "render", "--format", "json")
    assert code == 0, err
    provision, caddy = json.loads(out)
    assert caddy["Job"]["ID"] == "fvtt-caddy"
    ports = caddy["Job"]["TaskGroups"][0]["Networks"][0]["ReservedPorts"]
    assert [p["Value"] for p in ports] == [8080, 8443]
    env = caddy["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]
    config = load_config(path)
    assert env["CADDY_ADMIN"] == f"unix/{config.paths.run / 'caddy-admin.sock'}"

    code, out, err = run_main(monkeypatch, capsys, "--config", str(path), "nomad", "render", "--format", "hcl")
    assert code == 0 and 'job "fvtt-provision" {' in out and 'job "fvtt-caddy" {' in out and "{\n" in out


def test_an_instances_job_comes_from_the_fleets_records(tmp_path: Path, nomad_registered: None,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from foundry_fleet.wiring.services import open_services

    path = init_fleet(tmp_path / "f", runtime="nomad")
    path.write_text(path.read_text().replace('task_driver = "podman"', 'task_driver = "exec"'))
    config = load_config(path)
    services = open_services(config)
    services.releases.add(str(make_release_zip(tmp_path / "r.zip")))
    services.provisioning.create("test", "alice", "13.345", start=False)

    code, out, err = run_main(monkeypatch, capsys, "--config", str(path), "nomad", "render", "alice")
    assert code == 0, err
    hcl_part, json_part = out.split('\n{\n  "Job"', 1)
    job = json.loads('{\n  "Job"' + json_part)["Job"]
    assert job["ID"] == "fvtt-alice" and job["Meta"]["fvtt_release"] == "13.345"
    assert job["Constraints"][0]["RTarget"] == nomad_jobs.NODE_PLACEHOLDER  # never placed yet
    assert "placeholder" in hcl_part and 'job "fvtt-alice" {' in hcl_part
    [task] = job["TaskGroups"][0]["Tasks"]
    instance = services.instances.get("alice")
    assert instance.uid is not None  # the tests run as root: each instance has its own uid
    assert task["Driver"] == "exec" and task["User"] == f"fvtt-u{instance.uid}"
    assert Path(task["Config"]["command"]).name.startswith("node")
    assert task["Resources"]["MemoryMB"] == config.limits.memory_mb

    # With the podman task driver: the image the fleet would run, built from the host's node binary
    # unless [podman] names one for its major.
    path.write_text(path.read_text().replace('task_driver = "exec"', 'task_driver = "podman"'))
    code, out, err = run_main(monkeypatch, capsys, "--config", str(path), "nomad", "render", "alice", "--format", "json")
    assert code == 0, err
    podman_task = json.loads(out)["Job"]["TaskGroups"][0]["Tasks"][0]
    assert podman_task["Config"]["image"].startswith("localhost/foundry-fleet/node:")
    assert podman_task["Config"]["user"] == f"{instance.uid}:{instance.uid}"

    code, _, err = run_main(monkeypatch, capsys, "--config", str(path), "nomad", "render", "nobody")
    assert code == 3 and "nobody" in err  # not found
