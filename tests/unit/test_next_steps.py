"""What `up` says once the fleet serves: its URLs, trusting the local CA, and the DNS records it needs."""

from __future__ import annotations

from pathlib import Path

from foundry_fleet.config import load_config
from foundry_fleet.services.doctor.report import failed, passed
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.next_steps import next_steps


def test_a_local_fleet_names_its_panel_the_next_command_and_trust(tmp_path: Path) -> None:
    config = load_config(init_fleet(tmp_path))
    text = next_steps(config, [])
    lines = text.splitlines()
    assert lines[0] == "the fleet serves its panel at https://fleet.localhost:8443/"
    assert lines[1].startswith("no instances yet: ") and "foundry-fleet instance create NAME" in lines[1]
    assert "`foundry-fleet trust`" in lines[2]
    assert "DNS" not in text


def test_instances_are_listed_and_a_real_domain_says_its_records_and_whether_they_resolve(tmp_path: Path) -> None:
    config = load_config(init_fleet(tmp_path, domain="games.example.org"))
    dns = [failed("dns *.games.example.org", "does not resolve", "add a DNS record *.games.example.org -> 203.0.113.5"),
           passed("dns fleet.games.example.org", "resolves to 203.0.113.5, this host")]
    text = next_steps(config, [("gm1", "https://gm1.games.example.org/-/")], dns)
    assert text.splitlines() == [
        "the fleet serves its panel at https://fleet.games.example.org/",
        "  gm1: https://gm1.games.example.org/-/",
        "DNS: games.example.org and *.games.example.org need A (IPv4) and AAAA (IPv6) records naming this host",
        "  *.games.example.org: fail: does not resolve (add a DNS record *.games.example.org -> 203.0.113.5)",
        "  fleet.games.example.org: resolves here: resolves to 203.0.113.5, this host",
    ]  # acme: no local CA to trust
