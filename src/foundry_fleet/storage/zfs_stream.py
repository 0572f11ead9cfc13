"""`zfs send | zfs recv` between two pools, each side run where its pool is (this host, or another over
ssh: see ZfsRunner.remote); the stream passes through this host, which counts its bytes. Replication to a
backup destination and a move between homes both send this way."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence

from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.storage.zfs_cmd import ZfsRunner

_CHUNK = 1 << 20
_SSH_FAILED = 255
DEFAULT_HINT = "check both pools (zpool status); the next round retries from the last common snapshot"


def send_receive(sender: ZfsRunner, send: Sequence[str], receiver: ZfsRunner, receive: Sequence[str],
                 hint: str = DEFAULT_HINT) -> int:
    """Run `send` (a `zfs send ...` argv) through `sender` piped into `receive` (`zfs recv ...`) through
    `receiver`; returns the stream's bytes. Raises ZfsHostUnreachable when ssh to either side failed, else
    ExternalFailure with both sides' messages (and `hint`)."""
    send_argv, receive_argv = sender.argv(*send), receiver.argv(*receive)
    sending = subprocess.Popen(send_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    receiving = subprocess.Popen(receive_argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
    assert sending.stdout is not None and receiving.stdin is not None
    errors: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda k=k, p=p: errors.__setitem__(k, p.stderr.read()), daemon=True)
               for k, p in (("send", sending), ("recv", receiving))]
    for t in readers:
        t.start()
    total = 0
    try:
        while chunk := sending.stdout.read(_CHUNK):
            total += len(chunk)
            receiving.stdin.write(chunk)
    except BrokenPipeError:
        sending.kill()
    finally:
        try:
            receiving.stdin.close()
        except BrokenPipeError:
            pass
    sent, received = sending.wait(), receiving.wait()
    for t in readers:
        t.join()
    if sent == 0 and received == 0:
        return total
    said = {k: errors.get(k, b"").decode(errors="replace").strip() for k in ("send", "recv")}
    # ssh's own failure on a side is that host not answering; the other side's complaint (a broken pipe,
    # an incomplete stream) follows from it.
    if sender.remote and sent == _SSH_FAILED:
        raise sender.unreachable(send_argv, said["send"])
    if receiver.remote and received == _SSH_FAILED:
        raise receiver.unreachable(receive_argv, said["recv"])
    both = " / ".join(text for text in said.values() if text)
    raise ExternalFailure(f"`{' '.join(send_argv)} | {' '.join(receive_argv)}` failed: {both or 'no message'}", hint)
