"""The fvtt-provision dispatch payload: what the fleet sends is what the node reads back, and anything
else is refused with a message saying what was wrong."""

from __future__ import annotations

import json

import pytest

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.runtime.nomad.provision_payload import MAX_PAYLOAD_BYTES, ProvisionPayload

NODE = "9f1c0a52-4b7e-4c1e-8d63-0d1f5b2a7e11"


def payload(**overrides: object) -> dict[str, object]:
    return {"instance": "alice", "release": "13.345", "node": NODE, "uid": 200001, "port": 30001, **overrides}


def refused(data: bytes) -> str:
    with pytest.raises(InvalidInput) as e:
        ProvisionPayload.from_bytes(data)
    assert e.value.hint, "every refusal says what to do"
    return e.value.message


def test_round_trip_is_compact_json_with_every_field() -> None:
    p = ProvisionPayload("alice", "13.345", NODE, 200001, port=30001)
    data = p.to_bytes()
    assert json.loads(data) == payload()
    assert b" " not in data and b"\n" not in data
    assert ProvisionPayload.from_bytes(data) == p
    assert ProvisionPayload.from_bytes(ProvisionPayload("bob", "12.331", NODE, 200002).to_bytes()) \
        == ProvisionPayload("bob", "12.331", NODE, 200002, port=None)


def test_the_home_travels_only_when_it_is_not_the_fleets_own() -> None:
    """A node lays the instance out in the payload's home; without one, in the fleet's own, so a payload
    for the fleet's own home is byte for byte what it was before homes (older nodes still take it)."""
    own = ProvisionPayload("alice", "13.345", NODE, 200001, port=30001)
    assert own.home == "fleet" and "home" not in json.loads(own.to_bytes())
    assert ProvisionPayload.from_bytes(own.to_bytes()).home == "fleet"
    away = ProvisionPayload("alice", "13.345", NODE, 200001, port=30001, home="pool-b")
    assert json.loads(away.to_bytes()) == payload(home="pool-b")
    assert ProvisionPayload.from_bytes(away.to_bytes()) == away
    assert away.meta() == own.meta()


def test_meta_is_the_three_required_strings() -> None:
    assert ProvisionPayload("alice", "13.345", NODE, 200001).meta() == {
        "instance": "alice", "release": "13.345", "node": NODE}


def test_unknown_keys_are_refused_and_named() -> None:
    message = refused(json.dumps(payload(license="ABCD", admin_password="x")).encode())
    assert "'admin_password', 'license'" in message and "unknown keys" in message
    assert "known: instance, release, node, uid, port, home" in message


def test_missing_keys_are_named() -> None:
    data = payload()
    del data["uid"], data["node"]
    assert refused(json.dumps(data).encode()) == "the payload lacks node, uid"


@pytest.mark.parametrize(("name", "said"), [
    ("Alice", "has uppercase letters"),
    ("-alice", "is not a DNS label"),
    ("a" * 64, "a DNS label holds at most 63"),
    ("admin", "is reserved"),
    ("../etc", "is not a DNS label"),
])
def test_bad_instance_names_are_refused(name: str, said: str) -> None:
    message = refused(json.dumps(payload(instance=name)).encode())
    assert message.startswith("the payload's instance name") and said in message


@pytest.mark.parametrize(("release", "said"), [
    ("13", "is not a Foundry version"),
    ("v13.345", "is not a Foundry version"),
    ("13.0345", "is not written as the fleet writes versions"),
    ("13.345/../x", "is not a Foundry version"),
])
def test_bad_release_versions_are_refused(release: str, said: str) -> None:
    assert said in refused(json.dumps(payload(release=release)).encode())


@pytest.mark.parametrize(("uid", "said"), [
    ("200001", 'uid is "200001", not a whole number'),
    (200001.0, "uid is 200001.0, not a whole number"),
    (True, "uid is true, not a whole number"),
    (None, "uid is null, not a whole number"),
    (0, "uid 0 is outside"),
    (999, "uid 999 is outside"),
])
def test_a_uid_that_is_not_a_usable_whole_number_is_refused(uid: object, said: str) -> None:
    assert said in refused(json.dumps(payload(uid=uid)).encode())


@pytest.mark.parametrize(("changes", "said"), [
    ({"node": ""}, "is not a Nomad node ID"),
    ({"node": "node a"}, "is not a Nomad node ID"),
    ({"node": 7}, "node is 7, not text"),
    ({"instance": ["alice"]}, "instance is list, not text"),
    ({"port": 70000}, "port 70000 is not a TCP port"),
    ({"port": "30001"}, 'port is "30001", not a whole number'),
    ({"home": "Pool B"}, "home 'Pool B' is not a home's name"),
    ({"home": ""}, "home '' is not a home's name"),
    ({"home": 2}, "home is 2, not text"),
])
def test_other_wrong_values_are_refused(changes: dict[str, object], said: str) -> None:
    assert said in refused(json.dumps(payload(**changes)).encode())


@pytest.mark.parametrize(("data", "said"), [
    (b"", "the payload is not JSON (Expecting value at line 1 column 1)"),
    (b"{\"instance\": ", "the payload is not JSON"),
    (b"[1, 2]", "the payload is a JSON list, not an object"),
    (b"\xff\xfe", "the payload is not UTF-8 text"),
])
def test_malformed_payloads_are_refused(data: bytes, said: str) -> None:
    assert said in refused(data)


def test_a_payload_too_big_for_nomad_is_refused_both_ways() -> None:
    big = json.dumps({**payload(), "pad": "x" * MAX_PAYLOAD_BYTES}).encode()
    assert f"the payload is {len(big)} bytes; a provision payload is at most 16384" == refused(big)

    class Padded(ProvisionPayload):  # what a future field carrying too much would make
        def __post_init__(self) -> None:
            pass

    with pytest.raises(InvalidInput, match="is 16.* bytes; Nomad takes at most 16384"):
        Padded("alice", "13.345", "n" * MAX_PAYLOAD_BYTES, 200001).to_bytes()
