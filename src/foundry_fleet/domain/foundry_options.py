"""The files Foundry reads from `Config/`, built as data."""

from __future__ import annotations

import re

from foundry_fleet.domain.errors import InvalidInput

ROUTE_PREFIX = "-"


def build_options(
    *, data_path: str, port: int, hostname: str, proxy_port: int, proxy_ssl: bool = True
) -> dict[str, object]:
    """options.json for an instance behind the fleet's edge (Caddy terminates TLS)."""
    return {
        "dataPath": data_path,
        "port": port,
        "hostname": hostname,
        "localHostname": None,
        "routePrefix": ROUTE_PREFIX,
        "proxySSL": proxy_ssl,
        "proxyPort": proxy_port,
        "sslCert": None,
        "sslKey": None,
        "upnp": False,
        "awsConfig": None,
        "world": None,
        "language": "en.core",
        "compressStatic": True,
        "compressSocket": True,
        "fullscreen": False,
        "updateChannel": "stable",
        "hotReload": False,
        "telemetry": False,
    }


_LICENSE = re.compile(r"^[A-Z0-9]{24}$")


def normalise_license_key(key: str) -> str:
    """Foundry keys are 24 characters, shown in groups of four with dashes; license.json holds them bare."""
    bare = re.sub(r"[\s-]", "", key).upper()
    if not _LICENSE.match(bare):
        raise InvalidInput(
            "the license key is not a Foundry license key",
            "copy it from your foundryvtt.com account: 24 letters and digits, dashes optional",
        )
    return bare


def build_license(key: str) -> dict[str, str]:
    return {"license": normalise_license_key(key)}


# Foundry's own command-line flags: whatever runs the server (a node binary here, an image's
# entrypoint elsewhere) passes these. No self-update, no UPnP, no public-address lookup: the fleet
# owns releases, ports and addresses.
SERVER_FLAGS = ("--noupdate", "--noupnp", "--noipdiscovery")


def data_path_flag(data_dir: str) -> str:
    """The flag naming an instance's data: also how its server process is recognised on the host."""
    return f"--dataPath={data_dir}"


def server_args(entry: str, port: int, data_dir: str) -> list[str]:
    """The arguments after the node binary that start one Foundry server."""
    return [entry, f"--port={port}", data_path_flag(data_dir), *SERVER_FLAGS]
