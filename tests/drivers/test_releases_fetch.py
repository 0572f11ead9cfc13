"""download(): real HTTPS against a local server, and every refusal the policy asks for."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundry_fleet.config import ReleasesSection
from foundry_fleet.domain.errors import ExternalFailure, FleetError, InvalidInput
from foundry_fleet.releases.fetch import address_kind, download, redact_url
from foundry_fleet.releases.policy import MIB, DownloadPolicy, UnpackLimits, host_matches
from tests.support.ports import single_port
from tests.support.releases import LocalHTTPS, Route, local_policy

SECRET = "verify=S3CR3T-T0K3N&expires=1700000000"


def secret_url(server: LocalHTTPS, path: str, host: str = "127.0.0.1") -> str:
    return server.url(path, host) + "?" + SECRET


def assert_no_secret(err: FleetError) -> None:
    for text in (err.message, err.hint or "", str(err), repr(err), str(err.to_dict())):
        assert "S3CR3T" not in text and "expires=" not in text, text


# -- the policy --------------------------------------------------------------------------------------


def test_policy_and_limits_from_config() -> None:
    section = ReleasesSection(max_download_mb=3, max_unpacked_mb=5, max_entries=7)
    policy = DownloadPolicy.from_config(section)
    assert policy.allowed_hosts == ("foundryvtt.com", "*.foundryvtt.com")
    assert policy.max_download_bytes == 3 * MIB
    assert policy.allow_private_addresses is False and policy.extra_ca_file is None
    assert UnpackLimits.from_config(section) == UnpackLimits(max_unpacked_bytes=5 * MIB, max_entries=7)


@pytest.mark.parametrize("pattern", ["*", "*.*", "foo.*.com", "https://foundryvtt.com", "a b", ""])
def test_bad_allow_list_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidInput, match="not a host name"):
        DownloadPolicy(allowed_hosts=(pattern,), max_download_bytes=1)


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
_domain = st.lists(_label, min_size=1, max_size=3).map(".".join)


@given(_label, _domain)
def test_wildcards_match_subdomains_only(sub: str, domain: str) -> None:
    pattern = f"*.{domain}"
    assert host_matches(f"{sub}.{domain}", pattern)
    assert host_matches(f"deeper.{sub}.{domain}", pattern)
    assert host_matches(f"{sub}.{domain}.".upper(), pattern)  # case and the FQDN dot do not matter
    assert not host_matches(domain, pattern)  # the bare domain needs its own entry
    assert not host_matches(f"{sub}{domain}", pattern)  # "evilfoundryvtt.com"
    if not f"{domain}.{sub}".endswith(f".{domain}"):  # e.g. domain "a", sub "a": "a.a" is below "a"
        assert not host_matches(f"{domain}.{sub}", pattern)  # "foundryvtt.com.evil"


@given(_domain, _label)
def test_exact_names_match_only_themselves(domain: str, other: str) -> None:
    assert host_matches(domain.upper(), domain)
    assert not host_matches(f"{other}.{domain}", domain)
    assert not host_matches(f"{domain}{other}", domain)


def test_redact_url_keeps_scheme_host_path_only() -> None:
    assert (
        redact_url("https://user:pw@R2.FoundryVTT.com:443/releases/13.345/FoundryVTT-Node-13.345.zip?verify=x#frag")
        == "https://r2.foundryvtt.com/releases/13.345/FoundryVTT-Node-13.345.zip"
    )
    assert redact_url("https://[::1]:8443/a?b") == "https://[::1]:8443/a"
    assert redact_url("https://host:notaport/x?secret") == "<unreadable URL>"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


# -- real downloads ----------------------------------------------------------------------------------


def test_download_works_with_the_test_ca_and_private_addresses_allowed(https_server: LocalHTTPS, tmp_path: Path) -> None:
    body = b"PK\x03\x04" + bytes(range(256)) * 1000
    https_server.routes["/FoundryVTT-13.345.zip"] = Route(body=body)
    dest = tmp_path / "r.zip"
    seen: list[tuple[str, int, int | None]] = []
    sha, size = download(
        secret_url(https_server, "/FoundryVTT-13.345.zip", "localhost"),
        dest,
        local_policy(https_server),
        progress=lambda *a: seen.append(a),
    )
    assert (sha, size) == (hashlib.sha256(body).hexdigest(), len(body))
    assert dest.read_bytes() == body
    assert seen[-1] == ("download", len(body), len(body))
    assert https_server.requests == [f"/FoundryVTT-13.345.zip?{SECRET}"]  # the query still reaches the server


def test_the_server_certificate_must_be_trusted(https_server: LocalHTTPS, tmp_path: Path) -> None:
    https_server.routes["/r.zip"] = Route(body=b"x")
    with pytest.raises(ExternalFailure) as caught:
        download(secret_url(https_server, "/r.zip"), tmp_path / "r.zip", local_policy(https_server, extra_ca_file=None))
    assert "certificate" in (caught.value.hint or "")
    assert_no_secret(caught.value)
    assert not (tmp_path / "r.zip").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_default_policy_refuses_loopback(https_server: LocalHTTPS, tmp_path: Path, host: str) -> None:
    https_server.routes["/r.zip"] = Route(body=b"x")
    policy = local_policy(https_server, allow_private_addresses=False)
    with pytest.raises(InvalidInput) as caught:
        download(secret_url(https_server, "/r.zip", host), tmp_path / "r.zip", policy)
    assert "loopback address" in caught.value.message
    assert https_server.count() == 0  # refused before connecting
    assert_no_secret(caught.value)


def test_plain_http_is_refused(https_server: LocalHTTPS, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{https_server.port}/r.zip?{SECRET}"
    with pytest.raises(InvalidInput, match="only https:// downloads are allowed") as caught:
        download(url, tmp_path / "r.zip", local_policy(https_server))
    assert_no_secret(caught.value)
    assert https_server.count() == 0


def test_host_not_on_the_allow_list_is_refused(https_server: LocalHTTPS, tmp_path: Path) -> None:
    policy = local_policy(https_server, allowed_hosts=("foundryvtt.com", "*.foundryvtt.com"))
    with pytest.raises(InvalidInput) as caught:
        download(secret_url(https_server, "/r.zip"), tmp_path / "r.zip", policy)
    assert "127.0.0.1 is not an allowed download host" in caught.value.message
    assert "allowed_hosts" in (caught.value.hint or "")
    assert https_server.count() == 0


def test_redirects_are_followed_and_rechecked(https_server: LocalHTTPS, tmp_path: Path) -> None:
    https_server.routes["/start"] = Route(status=302, headers={"Location": "/middle?token=abc"})
    https_server.routes["/middle"] = Route(status=307, headers={"Location": https_server.url("/final.zip", "localhost")})
    https_server.routes["/final.zip"] = Route(body=b"zipbytes")
    sha, size = download(secret_url(https_server, "/start"), tmp_path / "r.zip", local_policy(https_server))
    assert size == 8 and sha == hashlib.sha256(b"zipbytes").hexdigest()
    assert [p.split("?")[0] for p in https_server.requests] == ["/start", "/middle", "/final.zip"]


def test_redirect_to_a_host_off_the_allow_list_is_refused(https_server: LocalHTTPS, tmp_path: Path) -> None:
    target = https_server.url("/elsewhere.zip", "localhost") + "?other=S3CR3T2"
    https_server.routes["/start"] = Route(status=302, headers={"Location": target})
    https_server.routes["/elsewhere.zip"] = Route(body=b"x")
    policy = local_policy(https_server, allowed_hosts=("127.0.0.1",))
    with pytest.raises(InvalidInput) as caught:
        download(secret_url(https_server, "/start"), tmp_path / "r.zip", policy)
    assert "localhost is not an allowed download host" in caught.value.message
    assert "S3CR3T2" not in caught.value.message
    assert_no_secret(caught.value)
    assert https_server.count("/elsewhere.zip") == 0
    assert not (tmp_path / "r.zip").exists()


def test_redirect_to_plain_http_is_refused(https_server: LocalHTTPS, tmp_path: Path) -> None:
    https_server.routes["/start"] = Route(status=301, headers={"Location": f"http://127.0.0.1:{https_server.port}/x"})
    with pytest.raises(InvalidInput, match="only https://"):
        download(secret_url(https_server, "/start"), tmp_path / "r.zip", local_policy(https_server))


def test_redirect_loops_stop_after_five_hops(https_server: LocalHTTPS, tmp_path: Path) -> None:
    https_server.routes["/loop"] = Route(status=302, headers={"Location": "/loop?" + SECRET})
    with pytest.raises(ExternalFailure, match="redirected more than 5 times") as caught:
        download(secret_url(https_server, "/loop"), tmp_path / "r.zip", local_policy(https_server))
    assert https_server.count("/loop") == 6  # the first request and five redirects
    assert_no_secret(caught.value)


def test_oversize_with_content_length_is_refused_before_writing(https_server: LocalHTTPS, tmp_path: Path) -> None:
    https_server.routes["/big.zip"] = Route(body=b"x" * (2 * MIB))
    policy = local_policy(https_server, max_download_bytes=MIB)
    with pytest.raises(InvalidInput, match="over the download limit of 1.0 MB") as caught:
        download(secret_url(https_server, "/big.zip"), tmp_path / "r.zip", policy)
    assert "max_download_mb" in (caught.value.hint or "")
    assert not (tmp_path / "r.zip").exists()


def test_oversize_without_content_length_is_refused_mid_stream(https_server: LocalHTTPS, tmp_path: Path) -> None:
    https_server.routes["/big.zip"] = Route(body=b"x" * (3 * MIB), send_length=False)
    policy = local_policy(https_server, max_download_bytes=MIB)
    written: list[int] = []
    with pytest.raises(InvalidInput, match="grew past the download limit") as caught:
        download(secret_url(https_server, "/big.zip"), tmp_path / "r.zip", policy, progress=lambda _p, d, _t: written.append(d))
    assert written and max(written) <= MIB  # bytes did arrive and get written before the refusal
    assert not (tmp_path / "r.zip").exists()  # ... and the partial file is gone
    assert_no_secret(caught.value)


def test_http_errors_name_the_status_and_suggest_a_fresh_link(https_server: LocalHTTPS, tmp_path: Path) -> None:
    https_server.routes["/expired.zip"] = Route(status=403, body=b"expired")
    with pytest.raises(ExternalFailure) as caught:
        download(secret_url(https_server, "/expired.zip"), tmp_path / "r.zip", local_policy(https_server))
    assert "HTTP 403" in caught.value.message
    assert "expire after 5 minutes" in (caught.value.hint or "")
    assert_no_secret(caught.value)
    assert not (tmp_path / "r.zip").exists()


def test_connection_refused_is_an_external_failure(https_server: LocalHTTPS, tmp_path: Path) -> None:
    port = single_port()  # free, and nobody listens on it
    with pytest.raises(ExternalFailure) as caught:
        download(f"https://127.0.0.1:{port}/r.zip?{SECRET}", tmp_path / "r.zip", local_policy(https_server))
    assert_no_secret(caught.value)


def test_a_transport_can_stand_in_for_the_network(tmp_path: Path) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"from the transport")

    policy = DownloadPolicy(allowed_hosts=("*.foundryvtt.com",), max_download_bytes=MIB, allow_private_addresses=True)
    _sha, size = download(
        "https://r2.foundryvtt.com/releases/x.zip?sig=1", tmp_path / "r.zip", policy, transport=httpx.MockTransport(answer)
    )
    assert size == len(b"from the transport")
    assert seen == ["https://r2.foundryvtt.com/releases/x.zip?sig=1"]


def test_query_strings_never_reach_the_logs(https_server: LocalHTTPS, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="foundry_fleet")
    https_server.routes["/ok.zip"] = Route(status=302, headers={"Location": "/final.zip?" + SECRET})
    https_server.routes["/final.zip"] = Route(body=b"zip")
    download(secret_url(https_server, "/ok.zip"), tmp_path / "r.zip", local_policy(https_server))
    with pytest.raises(FleetError):
        download(secret_url(https_server, "/missing.zip"), tmp_path / "s.zip", local_policy(https_server))
    assert "downloading https://127.0.0.1" in caplog.text
    assert "S3CR3T" not in caplog.text


def test_the_address_actually_connected_to_is_checked(
    https_server: LocalHTTPS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the lookup we vet says "public", the connection then lands on loopback.
    import foundry_fleet.releases.fetch as fetch

    monkeypatch.setattr(fetch, "_resolve", lambda host, port: [ipaddress.ip_address("93.184.216.34")])
    https_server.routes["/r.zip"] = Route(body=b"secret internal data")
    policy = local_policy(https_server, allow_private_addresses=False)
    with pytest.raises(InvalidInput, match="the connection went to 127.0.0.1, a loopback address") as caught:
        download(secret_url(https_server, "/r.zip", "localhost"), tmp_path / "r.zip", policy)
    assert_no_secret(caught.value)
    assert not (tmp_path / "r.zip").exists()
