"""Caddy on Nomad, the pure parts: which node is this host's, and whether Nomad's copy of the job is
still the job the fleet would submit (so it is not registered again and Caddy keeps running)."""

from __future__ import annotations

import copy

from foundry_fleet.edge.nomad_caddy import home_node, submitted_fields_match
from foundry_fleet.runtime.nomad.jobs import JobSettings, caddy_job


def node(name: str, address: str, status: str = "ready") -> dict[str, str]:
    return {"ID": f"id-{name}", "Name": name, "Address": address, "Status": status}


def test_the_home_node_is_the_one_named_after_this_host_else_the_one_at_its_address() -> None:
    nodes = [node("node-b", "10.0.0.2"), node("edge1", "10.0.0.1"), node("node-c", "127.0.0.1")]
    assert home_node(nodes, "edge1.example.org", {"127.0.0.1"})["ID"] == "id-edge1"
    assert home_node(nodes, "elsewhere", {"127.0.0.1", "10.0.0.9"})["ID"] == "id-node-c"
    assert home_node([node("edge1", "10.0.0.1", status="down")], "edge1", {"10.0.0.1"}) is None
    assert home_node(nodes, "elsewhere", {"192.0.2.1"}) is None


def test_nomads_copy_with_its_defaults_filled_in_is_the_same_job_and_a_change_is_not() -> None:
    job = caddy_job(JobSettings(fleet_id="f1"), caddy_binary="/usr/bin/caddy", admin_address="unix//run/a.sock",
                    http_port=80, https_port=443, node_id="n1")
    registered = copy.deepcopy(job)
    registered.update(Region="global", Priority=50, Version=3, Status="running")
    group = registered["TaskGroups"][0]
    group["Networks"][0]["ReservedPorts"][0].update(To=0, HostNetwork="default")
    group["Tasks"][0].update(User="", Templates=None, Meta=None)
    assert submitted_fields_match(job, registered)

    changed = copy.deepcopy(registered)
    changed["TaskGroups"][0]["Networks"][0]["ReservedPorts"][1]["Value"] = 8443
    assert not submitted_fields_match(job, changed)
    fewer = copy.deepcopy(registered)
    fewer["TaskGroups"][0]["Tasks"][0]["Config"]["args"] = ["run"]
    assert not submitted_fields_match(job, fewer)
    other_node = copy.deepcopy(registered)
    other_node["Constraints"][0]["RTarget"] = "n2"
    assert not submitted_fields_match(job, other_node)
