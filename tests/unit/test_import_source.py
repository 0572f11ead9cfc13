"""Where a zip to import may be downloaded from: a Discord attachment from Discord's file hosts only,
and the release allow-list never opened to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.releases.fetch import check_download_url
from foundry_fleet.releases.policy import DownloadPolicy, UnpackLimits
from foundry_fleet.services.data_import import DISCORD_ATTACHMENT_HOSTS, DataImport

ATTACHMENT = "https://cdn.discordapp.com/attachments/1/2/worlds.zip?ex=1&is=2&hm=3"


def imports(tmp_path: Path, *attachment_hosts: str) -> DataImport:
    policy = DownloadPolicy(allowed_hosts=("foundryvtt.com",), max_download_bytes=1024)
    return DataImport(UnpackLimits(max_unpacked_bytes=1024, max_entries=10), tmp_path,
                      policy, attachment_hosts or DISCORD_ATTACHMENT_HOSTS)


def test_discords_hosts_are_allowed_for_an_attachment_only(tmp_path: Path) -> None:
    d = imports(tmp_path)
    for url in (ATTACHMENT, "https://media.discordapp.net/attachments/1/2/w.zip", "https://CDN.discordapp.com./a.zip"):
        policy = d.source_policy(url, "discord-attachment")
        assert policy.allowed_hosts == DISCORD_ATTACHMENT_HOSTS
        assert policy.max_download_bytes == 1024 and not policy.allow_private_addresses
    # Without the source the release rules hold: Discord's host is not on them.
    assert d.source_policy(ATTACHMENT, None) is d.policy
    with pytest.raises(InvalidInput, match="not an allowed download host"):
        check_download_url(ATTACHMENT, d.source_policy(ATTACHMENT, None))


@pytest.mark.parametrize("url", [
    "http://cdn.discordapp.com/attachments/1/2/w.zip",  # not https
    "https://foundryvtt.com/releases/w.zip",  # a release host is not an attachment host
    "https://cdn.discordapp.com.example.net/w.zip",
    "https://evil.example/cdn.discordapp.com/w.zip",
    "https://user@evil.example/w.zip",
    "ftp://cdn.discordapp.com/w.zip",
    "not a url",
])
def test_anything_else_is_refused_as_an_attachment(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidInput, match="Discord's own file host"):
        imports(tmp_path).source_policy(url, "discord-attachment")


def test_an_unknown_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown import source"):
        imports(tmp_path).source_policy(ATTACHMENT, "anywhere")


def test_an_attachment_host_on_a_private_address_is_still_refused(tmp_path: Path) -> None:
    d = imports(tmp_path, "127.0.0.1")
    url = "https://127.0.0.1:8443/attachments/w.zip"
    with pytest.raises(InvalidInput, match="loopback"):
        check_download_url(url, d.source_policy(url, "discord-attachment"))
    with pytest.raises(InvalidInput, match="loopback"):
        d.fetch("alice", url, "discord-attachment")
    assert not list(tmp_path.iterdir())  # nothing staged for a refused download


def test_a_fleet_that_downloads_nothing_downloads_no_attachment(tmp_path: Path) -> None:
    d = DataImport(UnpackLimits(max_unpacked_bytes=1024, max_entries=10), tmp_path)
    with pytest.raises(InvalidInput, match="does not download"):
        d.source_policy(ATTACHMENT, "discord-attachment")
