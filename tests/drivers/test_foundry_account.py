"""The foundryvtt.com account adapter and the cache's add by version, against the strict stand-in site."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput, NotFound
from foundry_fleet.domain.release import ReleaseLayout
from foundry_fleet.releases.account import FoundryAccount
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.fetch import download
from foundry_fleet.releases.policy import MIB, DownloadPolicy
from tests.support.foundry_standin import build_release_zip
from tests.support.foundryvtt_standin import (
    ACCOUNT, KEYS, PASSWORD, SIGNATURE, FoundrySite, foundry_site, foundry_site_session, write_account_file,
)
from tests.support.releases import small_limits

__all__ = ["foundry_site", "foundry_site_session"]  # fixtures


def policy_for(site: FoundrySite, **overrides: object) -> DownloadPolicy:
    values: dict[str, object] = {
        "allowed_hosts": ("127.0.0.1",), "allow_private_addresses": True, "max_download_bytes": 50 * MIB,
        "extra_ca_file": site.cert, "account_site": site.base,
    }
    values.update(overrides)
    return DownloadPolicy(**values)  # type: ignore[arg-type]


@pytest.fixture
def account_file(tmp_path: Path) -> Path:
    return write_account_file(tmp_path / "account")


@pytest.fixture
def site(foundry_site: FoundrySite, tmp_path: Path) -> FoundrySite:
    zip_path = build_release_zip(tmp_path / "zips", ReleaseLayout.NODE, 13, 345)
    foundry_site.state.zips[345] = zip_path.read_bytes()
    return foundry_site


def test_logs_in_and_downloads_a_release_into_the_cache(
    site: FoundrySite, account_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    policy = policy_for(site)
    cache = ReleaseCache(tmp_path / "cache", policy, small_limits(max_unpacked_bytes=200 * MIB))
    progress: list[int] = []
    info = cache.add_version("13.345", lambda: FoundryAccount.from_file(account_file, policy),
                             lambda _phase, done, _total: progress.append(done))
    assert info.version == "13.345" and site.state.logins == 1
    assert progress and site.count("GET /presigned/") == 1
    # httpx's own request log is silenced by the CLI and the daemon; ours must never need that.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("foundry_fleet"))
    assert "SECRET-SIGNATURE" not in info.source and "SECRET-SIGNATURE" not in ours
    assert PASSWORD not in ours and "/presigned/" in ours
    # Cached: no request at all, not even the login page.
    before = len(site.state.requests)
    assert cache.add_version("13.345", lambda: pytest.fail("a cached version must not log in")).version == "13.345"
    assert len(site.state.requests) == before


def test_account_name_and_license_keys(site: FoundrySite, account_file: Path) -> None:
    with FoundryAccount.from_file(account_file, policy_for(site)) as account:
        assert account.login() == ACCOUNT
        assert account.license_keys() == [k.replace("-", "") for k in KEYS]


def test_a_wrong_password_is_refused_without_showing_it(site: FoundrySite, tmp_path: Path) -> None:
    bad = write_account_file(tmp_path / "bad", password="hunter2-wrong")
    with FoundryAccount.from_file(bad, policy_for(site)) as account, pytest.raises(InvalidInput) as e:
        account.login()
    text = f"{e.value.message} {e.value.hint}"
    assert f"foundryvtt.com refused the username or password in {bad}" in text
    assert "hunter2" not in text and site.state.logins == 0


def test_a_world_readable_account_file_is_refused(site: FoundrySite, account_file: Path) -> None:
    account_file.chmod(0o644)
    with pytest.raises(InvalidInput, match="readable by others"):
        FoundryAccount.from_file(account_file, policy_for(site))


def test_rate_limited_logins_back_off_then_succeed(site: FoundrySite, account_file: Path) -> None:
    site.state.rate_limited = 2
    waits: list[float] = []
    with FoundryAccount.from_file(account_file, policy_for(site), sleep=waits.append, jitter=lambda: 0.0) as account:
        assert account.login() == ACCOUNT
    assert waits == [120.0, 240.0]


def test_rate_limiting_gives_up_at_the_cap_and_says_so(site: FoundrySite, account_file: Path) -> None:
    site.state.rate_limited = 10
    waits: list[float] = []
    with FoundryAccount.from_file(account_file, policy_for(site), sleep=waits.append, jitter=lambda: 0.5,
                                  max_total_wait=600) as account, pytest.raises(ExternalFailure) as e:
        account.login()
    assert waits == [135.0, 270.0]
    assert "gave up after waiting 405s" in e.value.message and "limit is 600s" in e.value.message


def test_an_unknown_build_is_not_found(site: FoundrySite, account_file: Path) -> None:
    with FoundryAccount.from_file(account_file, policy_for(site)) as account, pytest.raises(NotFound, match="13.999"):
        account.presigned_url("13.999")


def test_the_site_host_must_be_allowed(site: FoundrySite, account_file: Path) -> None:
    policy = policy_for(site, allowed_hosts=("foundryvtt.com",))
    with FoundryAccount.from_file(account_file, policy) as account, pytest.raises(InvalidInput, match="not an allowed"):
        account.login()
    assert site.state.requests == []


def test_no_csrf_token_is_a_clear_error(site: FoundrySite, account_file: Path) -> None:
    site.state.form_without_token = True
    with FoundryAccount.from_file(account_file, policy_for(site)) as account, pytest.raises(ExternalFailure) as e:
        account.login()
    assert "no CSRF token" in e.value.message and site.count("POST /auth/login/") == 0


def test_a_timed_link_works_once_and_expires(site: FoundrySite, account_file: Path, tmp_path: Path) -> None:
    policy = policy_for(site)
    with FoundryAccount.from_file(account_file, policy) as account:
        link = account.presigned_url("13.345")
        assert SIGNATURE in link
        download(link, tmp_path / "a.zip", policy)
        with pytest.raises(ExternalFailure, match="HTTP 403") as e:
            download(link, tmp_path / "b.zip", policy)
        assert "SECRET-SIGNATURE" not in e.value.message
        site.state.link_lifetime = -1.0
        with pytest.raises(ExternalFailure, match="HTTP 403"):
            download(account.presigned_url("13.345"), tmp_path / "c.zip", policy)
    assert site.state.logins == 1


def test_concurrent_adds_of_one_version_log_in_once(site: FoundrySite, account_file: Path, tmp_path: Path) -> None:
    policy = policy_for(site)
    results: list[str] = []
    errors: list[BaseException] = []

    def add() -> None:
        cache = ReleaseCache(tmp_path / "cache", policy, small_limits(max_unpacked_bytes=200 * MIB))
        try:
            results.append(cache.add_version("13.345", lambda: FoundryAccount.from_file(account_file, policy)).version)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=add) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == ["13.345"] * 3
    assert site.state.logins == 1 and site.count("GET /presigned/") == 1
    assert "SECRET-SIGNATURE" not in (tmp_path / "cache" / "sources.json").read_text()
