"""What a release download and an unpack are allowed to do."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.config import ReleasesSection
from foundry_fleet.domain.errors import InvalidInput

MIB = 1024 * 1024

# Long work reports (phase, done, total): phase is "download" or "unpack", total is None when unknown.
ProgressCallback = Callable[[str, int, int | None], None]


def normalise_host(host: str) -> str:
    """Lower-case a host name, drop IPv6 brackets and the trailing dot of a fully qualified name."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def host_matches(host: str, pattern: str) -> bool:
    """`pattern` is an exact host name, or `*.suffix` for any host below `suffix` (not `suffix` itself)."""
    host = normalise_host(host)
    pattern = normalise_host(pattern)
    if not host:
        return False
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".suffix": the dot keeps "evilfoundryvtt.com" out of "*.foundryvtt.com"
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


_HOST_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


def _check_pattern(pattern: str) -> str:
    cleaned = normalise_host(pattern)
    body = cleaned[2:] if cleaned.startswith("*.") else cleaned
    if not (_HOST_NAME.match(body) or _is_ip_literal(body)):
        raise InvalidInput(
            f"allowed download host {pattern!r} is not a host name or a *.domain pattern",
            "list plain host names (foundryvtt.com) or wildcards for subdomains (*.foundryvtt.com)",
        )
    return cleaned


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class DownloadPolicy:
    """Where release downloads may come from, and how big they may be."""

    allowed_hosts: tuple[str, ...]
    allow_private_addresses: bool = False  # tests only: a local HTTPS server lives on 127.0.0.1
    max_download_bytes: int
    extra_ca_file: Path | None = None  # tests only: trust this CA besides the system's
    account_site: str = "https://foundryvtt.com"  # tests only: a stand-in of the site on loopback

    def __post_init__(self) -> None:
        # Frozen, so normalise through object.__setattr__ once, here.
        object.__setattr__(self, "allowed_hosts", tuple(_check_pattern(p) for p in self.allowed_hosts))
        if self.max_download_bytes < 1:
            raise InvalidInput("max_download_bytes must be at least 1", "set [releases] max_download_mb")
        if self.extra_ca_file is not None:
            object.__setattr__(self, "extra_ca_file", Path(self.extra_ca_file))

    def allows_host(self, host: str) -> bool:
        return any(host_matches(host, pattern) for pattern in self.allowed_hosts)

    @classmethod
    def from_config(cls, section: ReleasesSection) -> DownloadPolicy:
        return cls(
            allowed_hosts=tuple(section.allowed_hosts),
            allow_private_addresses=section.allow_private_addresses,
            max_download_bytes=section.max_download_mb * MIB,
            extra_ca_file=section.extra_ca_file,
            account_site=section.account_site,
        )


@dataclass(frozen=True)
class UnpackLimits:
    """Bounds on what unpacking one zip may produce (zip bombs, entry floods)."""

    max_unpacked_bytes: int
    max_entries: int
    max_ratio: float = 200.0
    # Tiny files compress absurdly well (a 40 kB run of spaces): the ratio rule only applies to entries
    # at least this large, where a high ratio means a bomb rather than a padded text file.
    ratio_applies_from_bytes: int = MIB

    @classmethod
    def from_config(cls, section: ReleasesSection) -> UnpackLimits:
        return cls(max_unpacked_bytes=section.max_unpacked_mb * MIB, max_entries=section.max_entries)
