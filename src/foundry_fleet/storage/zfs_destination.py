"""A ZFS backup destination: a dataset on this host (`POOL[/PATH]`, e.g. a pool on a USB disk) or on
another host over ssh (`[user@]host:POOL[/PATH]`). Each instance's data goes to `<dest>/<instance>`.

The first send is full; later ones are `zfs send -I <common> <latest>`, which carries every snapshot in
between, and `zfs recv -u -F` receives without mounting (nothing on the destination writes to it, so the
roll-back `-F` allows is only ever to the snapshot the stream starts from). A pool that is not there (an
exported disk, a host that does not answer) is *offline*, which the replication round skips, unlike a
dataset that is simply missing (then the first send creates it).
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable, Sequence

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput
from foundry_fleet.storage.base import DestinationOffline
from foundry_fleet.storage.zfs_cmd import ZfsCommandFailed, ZfsRunner
from foundry_fleet.storage.zfs_layout import parse_base

_USER_HOST = re.compile(r"^(?:[a-z_][a-z0-9_-]{0,31}@)?[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
_SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15")
_CHUNK = 1 << 20


class ZfsDestination:
    def __init__(self, target: str, source_dataset: Callable[[str], str], runner: ZfsRunner | None = None,
                 ssh: Sequence[str] = ("ssh",)) -> None:
        self.target = target
        self.source_dataset = source_dataset  # instance -> the dataset its snapshots are of
        host, sep, dataset = target.rpartition(":")
        if sep and not _USER_HOST.match(host):
            raise InvalidInput(f"{host!r} in backup destination {target!r} is not [user@]host",
                               "write the destination as POOL/PATH or user@host:POOL/PATH")
        self.pool, self.base = parse_base(dataset)
        self.host = host or None
        self._remote = [*ssh, *_SSH_OPTIONS, host, "--"] if host else []
        self.zfs = runner or ZfsRunner()

    def dataset(self, instance: str) -> str:
        return f"{self.base}/{instance}"

    def _run(self, *argv: str) -> str:
        try:
            return self.zfs.run([*self._remote, *argv])
        except ZfsCommandFailed as e:
            if self._remote and e.returncode == 255:  # ssh's own failure: no connection
                raise DestinationOffline(f"backup destination {self.target} does not answer: {e.message}",
                                         "it is retried every round; its snapshots are kept meanwhile") from e
            raise

    def check_online(self) -> None:
        try:
            line = self._run("zpool", "list", "-H", "-o", "name,health", self.pool)
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
        receive = [*self._remote, "zfs", "recv", "-u", "-F", self.dataset(instance)]
        sent = send_receive(send, receive)
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


def send_receive(send: list[str], receive: list[str],
                 hint: str = "check both pools (zpool status); the next round retries from the last common snapshot",
                 ) -> int:
    """Run `send | receive`, counting the bytes in between; raises with both sides' messages (and `hint`)."""
    sender = subprocess.Popen(send, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    receiver = subprocess.Popen(receive, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert sender.stdout is not None and receiver.stdin is not None
    errors: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda k=k, p=p: errors.__setitem__(k, p.stderr.read()), daemon=True)
               for k, p in (("send", sender), ("recv", receiver))]
    for t in readers:
        t.start()
    total = 0
    try:
        while chunk := sender.stdout.read(_CHUNK):
            total += len(chunk)
            receiver.stdin.write(chunk)
    except BrokenPipeError:
        sender.kill()
    finally:
        try:
            receiver.stdin.close()
        except BrokenPipeError:
            pass
    sent, received = sender.wait(), receiver.wait()
    for t in readers:
        t.join()
    if sent != 0 or received != 0:
        said = " / ".join(errors.get(k, b"").decode(errors="replace").strip() for k in ("send", "recv") if errors.get(k))
        if receive[0] != "zfs" and received == 255:  # ssh's own failure
            raise DestinationOffline(f"the connection broke during `zfs recv`: {said}", "it is retried next round")
        raise ExternalFailure(f"`{' '.join(send)} | {' '.join(receive)}` failed: {said or 'no message'}", hint)
    return total
