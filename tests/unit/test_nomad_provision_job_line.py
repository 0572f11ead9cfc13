"""Which command lines `python -m foundry_fleet` serves itself as the fvtt-provision job's (before the
rest of the command line is loaded): exactly the job's own, in every spelling click accepts; anything
else goes to the full command line, which says what is wrong with it."""

from __future__ import annotations

import pytest

from foundry_fleet.cli.nomad_provision import job_line_options

JOB = {"config": "/f/fleet.toml", "node_id": "n1", "payload": "/t/payload.json"}


@pytest.mark.parametrize("argv", [
    ["nomad", "provision", "--config", "/f/fleet.toml", "--node-id", "n1", "--payload", "/t/payload.json"],
    ["--config", "/f/fleet.toml", "nomad", "provision", "--node-id", "n1", "--payload", "/t/payload.json"],
    ["-c", "/f/fleet.toml", "nomad", "provision", "--payload=/t/payload.json", "--node-id=n1"],
], ids=["as-the-job-runs-it", "config-first", "short-config-and-equals"])
def test_the_jobs_command_line_is_served(argv: list[str]) -> None:
    assert job_line_options(argv) == JOB


def test_without_config_the_usual_search_applies() -> None:
    assert job_line_options(["nomad", "provision", "--node-id", "n1", "--payload", "p.json"]) == {
        "node_id": "n1", "payload": "p.json"}


@pytest.mark.parametrize("argv", [
    ["nomad", "provision", "--node-id", "n1"],  # no payload: click says it is missing
    ["nomad", "provision", "--node-id", "n1", "--payload", "p", "--help"],
    ["nomad", "provision", "--node-id", "n1", "--payload", "p", "extra"],
    ["nomad", "provision", "--node-id", "n1", "--node-id", "n2", "--payload", "p"],
    ["nomad", "provision", "--node-id", "", "--payload", "p"],
    ["nomad", "provision", "--node-id", "n1", "--payload"],
    ["--node-id", "n1", "nomad", "provision", "--payload", "p"],  # an option of provision before it
    ["nomad", "render", "--node-id", "n1", "--payload", "p"],
    ["provision", "nomad", "--node-id", "n1", "--payload", "p"],
    ["-c=f.toml", "nomad", "provision", "--node-id", "n1", "--payload", "p"],
    ["nomad", "provision", "--", "--node-id", "n1", "--payload", "p"],
    [],
])
def test_anything_else_goes_to_the_full_command_line(argv: list[str]) -> None:
    assert job_line_options(argv) is None
