import pytest

from foundry_fleet.domain.errors import InvalidInput, NotFound
from foundry_fleet.domain.snapshot_choice import choose_snapshot

SNAPS = [("nightly-2026-10-31T0300", 1.0), ("nightly-2026-11-29T0300", 3.0), ("manual-2026-11-30T1012", 4.0),
         ("nightly-2026-11-30T0300", 2.0)]  # not in time order: `latest` goes by when, not by place


def test_a_full_name_is_itself() -> None:
    assert choose_snapshot("nightly-2026-10-31T0300", SNAPS, "alice") == "nightly-2026-10-31T0300"


def test_latest_is_the_newest_taken() -> None:
    assert choose_snapshot("latest", SNAPS, "alice") == "manual-2026-11-30T1012"
    assert choose_snapshot(" latest ", SNAPS, "alice") == "manual-2026-11-30T1012"


def test_a_snapshot_named_latest_by_hand_means_itself() -> None:
    assert choose_snapshot("latest", [*SNAPS, ("latest", 0.5)], "alice") == "latest"


def test_a_unique_prefix_is_its_snapshot() -> None:
    assert choose_snapshot("nightly-2026-10", SNAPS, "alice") == "nightly-2026-10-31T0300"
    assert choose_snapshot("manual", SNAPS, "alice") == "manual-2026-11-30T1012"


def test_an_ambiguous_prefix_names_the_candidates() -> None:
    with pytest.raises(InvalidInput) as e:
        choose_snapshot("nightly-2026-11", SNAPS, "alice")
    assert "nightly-2026-11-29T0300" in e.value.message and "nightly-2026-11-30T0300" in e.value.message
    assert "2 snapshots of alice" in e.value.message


def test_no_match_says_so() -> None:
    with pytest.raises(NotFound, match="no snapshot named or starting with 'weekly'"):
        choose_snapshot("weekly", SNAPS, "alice")
    with pytest.raises(NotFound):
        choose_snapshot("", SNAPS, "alice")
    with pytest.raises(NotFound, match="no snapshots yet"):
        choose_snapshot("latest", [], "alice")


def test_many_candidates_are_cut_short() -> None:
    many = [(f"hourly-{i:03d}", float(i)) for i in range(30)]
    with pytest.raises(InvalidInput) as e:
        choose_snapshot("hourly", many, "alice")
    assert "hourly-029" in e.value.message and "hourly-000" not in e.value.message and "and 20 older" in e.value.message
