"""A job as HCL2 for reading: the blocks and attributes Nomad's jobspec names, durations as Go
durations, Nomad's runtime variables kept and any other template sequence escaped."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_fleet.runtime.base import ReleaseToRun, ResourceLimits, TaskSpec
from foundry_fleet.runtime.nomad import hcl
from foundry_fleet.runtime.nomad.jobs import JobSettings, instance_job, provision_job

SETTINGS = JobSettings(fleet_id="f00dcafe", python="/usr/bin/python3", config_path=Path("/srv/fleet/fleet.toml"))


def alice_job() -> dict:
    spec = TaskSpec(name="alice", release=ReleaseToRun("13.345", 13, Path("/i"), "resources/app/main.js"),
                    data_dir=Path("/d"), shared_dir=Path("/s"), log_dir=Path("/l"), port=30001, uid=200001,
                    gid=200001, env={"NODE_ENV": "production"}, limits=ResourceLimits(memory_mb=1024, cpu_percent=100))
    return instance_job(spec, SETTINGS, node_id="9f2c-node", image="localhost/foundry-fleet/node:20", node_binary=None)


def block(text: str, header: str) -> str:
    """The block opened by the line `header {` (its own indentation), up to its closing brace."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == header + " {")
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == indent + "}")
    return "\n".join(line[len(indent):] for line in lines[start:end + 1])


def test_durations_are_written_as_go_durations() -> None:
    assert [hcl.duration(n) for n in (0, 2 * 10**9, 600 * 10**9, 90 * 10**9, 3600 * 10**9, 1_500_000_000)] == [
        "0s", "2s", "10m", "1m30s", "1h", "1s500ms"]
    with pytest.raises(ValueError):
        hcl.duration(1.5)  # type: ignore[arg-type]


def test_the_restart_block_and_the_check_read_like_a_jobspec() -> None:
    text = hcl.render_job(alice_job())
    assert block(text, "restart") == (
        'restart {\n  attempts = 5\n  interval = "10m"\n  delay    = "1s"\n  mode     = "fail"\n}')
    assert block(text, "check") == (
        'check {\n  name     = "foundry-status"\n  type     = "http"\n  path     = "/-/api/status"\n'
        '  interval = "15s"\n  timeout  = "2s"\n}')


def test_the_job_header_group_network_and_volumes() -> None:
    text = hcl.render_job(alice_job())
    assert text.startswith('job "fvtt-alice" {\n  type        = "service"\n')
    assert "name " not in text.split("group")[0]  # Name equals the ID: the label says it
    assert block(text, "constraint") == (
        'constraint {\n  attribute = "${node.unique.id}"\n  operator  = "="\n  value     = "9f2c-node"\n}')
    assert block(text, "network") == 'network {\n  mode = "host"\n  port "http" {}\n}'
    assert block(text, 'volume "install"') == (
        'volume "install" {\n  type      = "host"\n  source    = "fvtt-alice-install"\n  read_only = true\n}')
    assert 'group "foundry" {' in text and 'task "foundry" {' in text
    assert text.count("{") == text.count("}")


def test_the_driver_config_keeps_its_own_keys_and_runtime_variables() -> None:
    config = block(hcl.render_job(alice_job()), "config")
    assert config.splitlines()[1] == '  image   = "localhost/foundry-fleet/node:20"'
    assert '    "--port=${NOMAD_PORT_http}",' in config  # a long list: one item a line
    assert '  cap_drop        = ["all"]' in config and "  readonly_rootfs = true" in config


def test_the_provision_job_is_parameterized_with_a_dispatch_payload() -> None:
    text = hcl.render_job(provision_job(SETTINGS))
    assert block(text, "parameterized") == (
        'parameterized {\n  payload       = "required"\n  meta_required = ["instance", "release", "node"]\n}')
    assert block(text, "dispatch_payload") == 'dispatch_payload {\n  file = "payload.json"\n}'
    assert '"${NOMAD_TASK_DIR}/payload.json"' in text and 'type        = "sysbatch"' in text


def test_other_template_sequences_and_quotes_are_escaped() -> None:
    assert hcl.string('say "hi" ${user} %{if} ${NOMAD_ALLOC_DIR} ${attr.kernel.name}\n') == (
        '"say \\"hi\\" $${user} %%{if} ${NOMAD_ALLOC_DIR} ${attr.kernel.name}\\n"')


def test_a_field_it_does_not_know_is_refused_not_dropped() -> None:
    job = alice_job()
    job["TaskGroups"][0]["Tasks"][0]["Templates"] = [{"EmbeddedTmpl": "x"}]
    with pytest.raises(ValueError, match="Task.Templates"):
        hcl.render_job(job)


def test_a_header_becomes_comments() -> None:
    text = hcl.render_job(provision_job(SETTINGS), "first line\n\nthird")
    assert text.startswith("# first line\n#\n# third\n\njob ")
