"""A ZFS backup destination: a dataset on this host (`POOL[/PATH]`, e.g. a pool on a USB disk) or on
another host over ssh (`[user@]host:POOL[/PATH]`). Each instance's data goes to `<dest>/<instance>`.

The first send is full; later ones are `zfs send -I <common> <latest>`, which carries every snapshot in
between, and `zfs recv -u -F` receives without mounting (nothing on the destination writes to it, so the
roll-back `-F` allows is only ever to the snapshot the stream starts from). A pool that is not there (an
exported disk, a host that does not answer) is *offline*, which the replication round skips, unlike a
dataset that is simply missing (then the first send creates it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.storage.base import DestinationOffline
from foundry_fleet.storage.zfs_cmd import ZfsCommandFailed, ZfsHostUnreachable, ZfsRunner, is_user_host, ssh_prefix
from foundry_fleet.storage.zfs_layout import parse_base
from foundry_fleet.storage.zfs_stream import send_receive


class ZfsDestination:
    def __init__(self, target: str, source_dataset: Callable[[str], str], runner: ZfsRunner | None = None,
                 ssh: Sequence[str] = ("ssh",), source_runner: Callable[[str], ZfsRunner] | None = None) -> None:
        """`source_dataset`: instance -> the dataset its snapshots are of; `source_runner`: instance -> the
        runner of the pool holding that dataset (default: this host's)."""
        self.target = target
        self.source_dataset = source_dataset
        host, sep, dataset = target.rpartition(":")
        if sep and not is_user_host(host):
            raise InvalidInput(f"{host!r} in backup destination {target!r} is not [user@]host",
                               "write the destination as POOL/PATH or user@host:POOL/PATH")
        self.pool, self.base = parse_base(dataset)
        self.host = host or None
        local = runner or ZfsRunner()
        self.zfs = replace(local, remote=ssh_prefix(ssh, host), whose=f"backup destination {target}") if host else local
        self.source_runner = source_runner or (lambda _instance: local)

    def dataset(self, instance: str) -> str:
        return f"{self.base}/{instance}"

    def _run(self, *argv: str) -> str:
        try:
            return self.zfs.run(argv)
        except ZfsHostUnreachable as e:
            raise DestinationOffline(e.message,
                                     "it is retried every round; its snapshots are kept meanwhile") from e

    def check_online(self, timeout: float | None = None) -> None:
        """DestinationOffline unless its pool answers and is usable; `timeout`: seconds the command may
        take (ssh included) before the destination counts as not answering."""
        zfs = self.zfs if timeout is None else replace(self.zfs, timeout=timeout)
        try:
            line = zfs.run(("zpool", "list", "-H", "-o", "name,health", self.pool))
        except ZfsHostUnreachable as e:
            raise DestinationOffline(e.message, "it is retried every round; its snapshots are kept meanwhile") from e
        except ZfsCommandFailed as e:
            raise DestinationOffline(f"backup destination {self.target}: pool {self.pool} is not available",
                                     "import the pool (or connect the disk); it is retried every round") from e
        health = (line.split("\t") + ["", ""])[1].strip()
        if health not in ("ONLINE", "DEGRADED"):
            raise DestinationOffline(f"backup destination {self.target}: pool {self.pool} is {health}",
                                     f"see `zpool status {self.pool}` there")

    def snapshots(self, instance: str) -> list[str]:
        """The instance's snapshots at the destination, oldest first ([] before the first send)."""
        self.check_online()
        try:
            out = self._run("zfs", "get", "-H", "-p", "-r", "-o", "name,value", "createtxg", self.dataset(instance))
        except ZfsCommandFailed as e:
            if e.missing:
                return []
            raise
        found = []
        for line in out.splitlines():
            name, _, txg = line.partition("\t")
            dataset, at, snap = name.partition("@")
            if at and dataset == self.dataset(instance):
                found.append((int(txg) if txg.strip().isdigit() else 0, snap))
        return [snap for _txg, snap in sorted(found)]

    def send(self, instance: str, source_names: Sequence[str], base: str | None, latest: str) -> int:
        """Send `<source>@latest` with every snapshot since `base` (or in full); returns the stream's bytes."""
        del source_names  # `-I` carries all the snapshots in between by itself
        source = self.source_dataset(instance)
        if base is None and self.base != self.pool:
            self._run("zfs", "create", "-p", "-o", "mountpoint=none", self.base)
        send = ["zfs", "send", *(["-I", f"{source}@{base}"] if base else []), f"{source}@{latest}"]
        try:
            sent = send_receive(self.source_runner(instance), send, self.zfs,
                                ["zfs", "recv", "-u", "-F", self.dataset(instance)])
        except ZfsHostUnreachable as e:
            if e.whose != self.zfs.whose:
                raise  # the source's host (a home over ssh) did not answer: not this destination's doing
            raise DestinationOffline(f"the connection to backup destination {self.target} broke during "
                                     f"`zfs recv`: {e.message}", "it is retried next round") from e
        if base is None:  # a copy is never mounted by itself, not even when its pool is imported again
            self._run("zfs", "set", "canmount=noauto", self.dataset(instance))
        return sent

    def destroy(self, instance: str, names: Sequence[str]) -> None:
        for name in names:
            try:
                self._run("zfs", "destroy", f"{self.dataset(instance)}@{name}")
            except ZfsCommandFailed as e:
                if not e.missing:
                    raise

