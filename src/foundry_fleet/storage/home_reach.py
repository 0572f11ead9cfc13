"""Whether this host sees a home on another host at that home's root, before anything is written there.

A ZFS home whose pool is on another host runs its zfs commands there over ssh, while the fleet writes
that home's files (instance folders, releases, restores, what tenants upload) through a mount of the
pool host's tree on this host (NFS with `crossmnt`, since each instance's data is a dataset of its
own). Were that mount missing (an empty folder in its place) or of another tree, those files would be
written where the node never sees them, and its instances would start on data without them; nothing
would say so.

So a token written here is read back on the pool's host: at the root, and in the home's `shared`
dataset, a dataset of its own (a mount without `crossmnt` shows an empty folder there).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.storage.zfs import ZfsStorage
from foundry_fleet.storage.zfs_cmd import ZfsCommandFailed, ZfsHostUnreachable

MARK = ".fleet-home"


class HomeNotReached(ExternalFailure):
    """This host's view of a home's root is not the tree on its pool's host."""


def check_reached(storage: ZfsStorage, home: str) -> None:
    """Nothing for a home whose pool is here; for one over ssh, HomeNotReached unless a token written at
    its root and in its `shared` dataset here reads back the same on its host (ZfsHostUnreachable when
    the host does not answer)."""
    runner = storage.zfs
    if not runner.remote:
        return
    token = f"{home} {secrets.token_hex(16)}"
    for folder in (storage.root, storage.shared_dir()):
        mark = folder / MARK
        _write(mark, token + "\n")
        try:
            seen = runner.run(["cat", "--", str(mark)]).strip()
        except ZfsHostUnreachable:
            raise
        except ZfsCommandFailed:
            seen = ""
        if seen != token:
            raise HomeNotReached(
                f"home {home}: {folder} on this host is not {folder} on {runner.host} "
                f"({'a file written here is not there' if not seen else 'it holds another token'}), so the "
                "fleet would write this home's files where its nodes never see them",
                f"mount {runner.host}'s {storage.root} at {storage.root} here (NFS with crossmnt, so that each "
                "dataset under it is seen too), then start again")


def _write(path: Path, text: str) -> None:
    # Never through a link someone left at that name: the fleet's own folder, but written as root.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
