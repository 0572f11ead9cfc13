"""Find the Node.js binary for a Foundry generation and check it is a version that generation runs on."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from foundry_fleet.config import NodeSection
from foundry_fleet.domain.errors import Unsupported
from foundry_fleet.domain.release import node_range_for


@lru_cache(maxsize=32)
def _node_major(binary: str, mtime_ns: int) -> int:  # mtime in the key: a replaced binary is re-read
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20, check=False)
    m = re.match(r"v?(\d+)\.", out.stdout.strip())
    if out.returncode != 0 or not m:
        raise Unsupported(f"{binary} --version did not print a Node.js version ({out.stdout.strip()[:60]!r})")
    return int(m.group(1))


def resolve_node(section: NodeSection, generation: int) -> str:
    """Absolute path of the node binary for `generation`, or Unsupported saying why and what to set."""
    wanted = node_range_for(generation)
    configured = section.binary_for(generation)
    key = f'[node] binaries."{generation}"'
    found = shutil.which(configured)
    if not found:
        raise Unsupported(
            f"Foundry {generation} needs Node.js {wanted}, but the node binary {configured!r} was not found",
            f"install Node.js {wanted} and set {key} = \"/path/to/node\" in fleet.toml",
        )
    path = str(Path(found).resolve())
    major = _node_major(path, Path(path).stat().st_mtime_ns)
    if not wanted.allows(major):
        raise Unsupported(
            f"Foundry {generation} needs Node.js {wanted}, but {path} is Node.js {major}",
            f"install Node.js {wanted} and set {key} = \"/path/to/node\" in fleet.toml",
        )
    return path
