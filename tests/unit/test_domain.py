"""The pure rules: names, versions, Node ranges, crash policy, admin keys, ports, options."""

from __future__ import annotations

import hashlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundry_fleet.domain import admin_key
from foundry_fleet.domain.crash_policy import CrashPolicy, decide_after_crash
from foundry_fleet.domain.errors import Conflict, InvalidInput, Unsupported
from foundry_fleet.domain.foundry_options import build_license, build_options, normalise_license_key
from foundry_fleet.domain.names import RESERVED_NAMES, validate_domain, validate_instance_name
from foundry_fleet.domain.ports import choose_port
from foundry_fleet.domain.release import NodeRange, ReleaseLayout, node_range_for, parse_version


@pytest.mark.parametrize("name", ["a", "gm1", "alice-campaign", "x" * 63, "0day"])
def test_valid_names(name: str) -> None:
    assert validate_instance_name(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "empty"),
        ("x" * 64, "at most 63"),
        ("Alice", "uppercase"),
        ("-alice", "not a DNS label"),
        ("alice-", "not a DNS label"),
        ("al_ice", "not a DNS label"),
        ("al.ice", "not a DNS label"),
        ("xn--abc", "positions 3-4"),
        ("fleet", "reserved"),
        ("www", "reserved"),
        ("provision", "reserved"),  # fvtt-provision is the fleet's own Nomad job
        ("caddy", "reserved"),  # and fvtt-caddy
        ("../etc", "not a DNS label"),
        ("a b", "not a DNS label"),
    ],
)
def test_invalid_names_say_why(name: str, says: str) -> None:
    with pytest.raises(InvalidInput) as e:
        validate_instance_name(name)
    assert says in e.value.message
    assert e.value.hint


def test_extra_reserved_name() -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        validate_instance_name("control", frozenset({"control"}))


@given(st.text(alphabet=string.ascii_lowercase + string.digits + "-._/ A", max_size=80))
def test_accepted_names_are_always_safe_labels(name: str) -> None:
    try:
        ok = validate_instance_name(name)
    except InvalidInput:
        return
    assert 1 <= len(ok) <= 63
    assert set(ok) <= set(string.ascii_lowercase + string.digits + "-")
    assert not ok.startswith("-") and not ok.endswith("-")
    assert ok not in RESERVED_NAMES


def test_domains() -> None:
    assert validate_domain("Games.Example.org.") == "games.example.org"
    for bad in ("", "exa mple.org", "-x.org", "a..b"):
        with pytest.raises(InvalidInput):
            validate_domain(bad)


def test_versions_and_node_ranges() -> None:
    assert parse_version("13.345") == (13, 345)
    with pytest.raises(InvalidInput):
        parse_version("13")
    assert node_range_for(12) == NodeRange(18, 20)
    assert node_range_for(13).allows(20) and node_range_for(13).allows(22)
    assert not node_range_for(13).allows(23)
    assert not node_range_for(12).allows(21)
    assert node_range_for(14).allows(24) and not node_range_for(14).allows(20)
    with pytest.raises(Unsupported, match="generation 99"):
        node_range_for(99)


def test_layout_entries() -> None:
    assert ReleaseLayout.NODE.entry == "main.js"
    assert ReleaseLayout.LINUX.entry == "resources/app/main.mjs"
    assert ReleaseLayout.LEGACY_NODE.entry == "resources/app/main.js"


def test_admin_key_matches_pbkdf2_sha512() -> None:
    stored = admin_key.hash_admin_password("hunter22")
    expected = hashlib.pbkdf2_hmac("sha512", b"hunter22", b"17c4f39053ac5a50d5797c665ad1f4e6", 1000, 64).hex()
    assert stored == expected and len(stored) == 128
    assert admin_key.verify_admin_password("hunter22", stored + "\n")
    assert not admin_key.verify_admin_password("hunter23", stored)
    assert admin_key.hash_admin_password("x", "othersalt") != admin_key.hash_admin_password("x")
    a, b = admin_key.generate_admin_password(), admin_key.generate_admin_password()
    assert a != b and len(a) >= 20


def test_license_keys() -> None:
    assert normalise_license_key("abcd-efgh-ijkl-mnop-qrst-uvwx") == "ABCDEFGHIJKLMNOPQRSTUVWX"
    assert build_license("ABCD EFGH IJKL MNOP QRST UVWX") == {"license": "ABCDEFGHIJKLMNOPQRSTUVWX"}
    for bad in ("short", "ABCD-EFGH-IJKL-MNOP-QRST-UVW!", "A" * 25):
        with pytest.raises(InvalidInput):
            normalise_license_key(bad)


def test_options_for_the_edge() -> None:
    o = build_options(data_path="/d", port=30001, hostname="gm.example.org", proxy_port=443)
    assert o["routePrefix"] == "-" and o["proxySSL"] is True and o["proxyPort"] == 443
    assert o["upnp"] is False and o["port"] == 30001 and o["hostname"] == "gm.example.org"
    assert o["sslCert"] is None and o["sslKey"] is None and o["dataPath"] == "/d"


def test_choose_port() -> None:
    assert choose_port(30000, 30005, [30000, 30001]) == 30002
    assert choose_port(30000, 30005, [30000], is_free=lambda p: p != 30001) == 30002
    with pytest.raises(Conflict, match="no free port"):
        choose_port(30000, 30001, [30000, 30001])


@given(st.sets(st.integers(30000, 30020)))
def test_chosen_port_is_lowest_free(taken: set[int]) -> None:
    try:
        port = choose_port(30000, 30020, taken)
    except Conflict:
        assert taken == set(range(30000, 30021))
        return
    assert port not in taken
    assert all(p in taken for p in range(30000, port))


POLICY = CrashPolicy(backoff_initial=1, backoff_max=8, max_crashes=3, window=60, stable_after=30)


def test_backoff_doubles_then_caps() -> None:
    crashes: tuple[float, ...] = ()
    delays = []
    for i in range(3):
        d = decide_after_crash(POLICY, crashes, now=100 + i, ran_for=1)
        assert not d.give_up
        delays.append(d.delay)
        crashes = d.recent
    assert delays == [1, 2, 4]
    d = decide_after_crash(POLICY, crashes, now=104, ran_for=1)
    assert d.give_up and len(d.recent) == 4


def test_old_crashes_leave_the_window() -> None:
    d = decide_after_crash(POLICY, (0.0, 1.0, 2.0), now=200, ran_for=1)
    assert not d.give_up and d.recent == (200,) and d.delay == 1


def test_a_long_run_resets_the_backoff() -> None:
    d = decide_after_crash(POLICY, (90.0, 95.0), now=100, ran_for=45)
    assert d.delay == 1 and not d.give_up


@given(st.lists(st.floats(0, 1000), max_size=20), st.floats(0, 1000), st.floats(0, 100))
def test_crash_decision_invariants(history: list[float], now: float, ran_for: float) -> None:
    hist = tuple(t for t in sorted(history) if t <= now)
    d = decide_after_crash(POLICY, hist, now, ran_for)
    assert d.recent[-1] == now
    assert all(now - t <= POLICY.window for t in d.recent)
    assert 0 <= d.delay <= POLICY.backoff_max
    assert d.give_up == (len(d.recent) > POLICY.max_crashes)
