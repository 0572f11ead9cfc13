"""The floor under an SFTP upload to the fleet: asyncssh's SSH transport alone, with nothing behind it.

OpenSSH's `ssh` sends the same 200 MB of random bytes as bench/sftp_upload.py into an asyncssh session that
only counts them: no SFTP, no file, no disk; the same ciphers as the endpoint (AES-GCM) and asyncssh's
default window. What this costs is what any SFTP server built on asyncssh pays before its first byte of
SFTP, so an upload through the endpoint cannot be faster. `cp` of the same file on the same disk is timed
beside it, as in bench/sftp_upload.py. Median of the rounds; CPU seconds of this process (the server) and of
the client apart.

    .venv/bin/python bench/sftp_transport_floor.py [--mb 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.sftp.server import GCM_CIPHERS  # noqa: E402


class CountingSession(asyncssh.SSHServerSession[bytes]):
    """Takes a command's stdin and throws it away; answers the byte count at its end."""

    def __init__(self) -> None:
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.received = 0

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:  # type: ignore[override]
        self.chan = chan

    def exec_requested(self, command: str) -> bool:
        return True

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.received += len(data)

    def eof_received(self) -> bool:
        assert self.chan is not None
        self.chan.write(b"%d\n" % self.received)
        self.chan.exit(0)
        return False


class OneKey(asyncssh.SSHServer):
    def __init__(self, key: asyncssh.SSHKey) -> None:
        self.key = key

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data == self.key.public_data

    def session_requested(self) -> CountingSession:
        return CountingSession()


def own_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


async def measure(work: Path, mb: int, rounds: int) -> dict[str, object]:
    key = work / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    server = await asyncssh.create_server(
        lambda: OneKey(asyncssh.read_public_key(f"{key}.pub")), "127.0.0.1", 0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")], encoding=None,
        encryption_algs=GCM_CIPHERS)
    port = server.sockets[0].getsockname()[1]
    source = work / "upload.bin"
    with source.open("wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1024 * 1024))
    ssh = ["ssh", "-p", str(port), "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           "bench@127.0.0.1", "count"]

    async def send(path: Path) -> tuple[float, float, float]:
        server_before, client_before = own_cpu(), children_cpu()
        start = time.perf_counter()
        with path.open("rb") as stdin:
            proc = await asyncio.create_subprocess_exec(*ssh, stdin=stdin, stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
        took = time.perf_counter() - start
        assert proc.returncode == 0 and int(out) == path.stat().st_size
        return took, own_cpu() - server_before, children_cpu() - client_before

    sign_in, floor, server_cpu, client_cpu, cp = [], [], [], [], []
    try:
        for _ in range(rounds):
            sign_in.append((await send(Path("/dev/null")))[0])
            took, server_s, client_s = await send(source)
            floor.append(took)
            server_cpu.append(server_s)
            client_cpu.append(client_s)
            (work / "copy.bin").unlink(missing_ok=True)
            os.sync()
            start = time.perf_counter()
            subprocess.run(["cp", str(source), str(work / "copy.bin")], check=True)
            os.sync()
            cp.append(time.perf_counter() - start)
    finally:
        server.close()
        await server.wait_closed()
    sign_in_s, floor_s, cp_s = statistics.median(sign_in), statistics.median(floor), statistics.median(cp)
    return {"machine": describe(), "mb": mb, "rounds": rounds,
            "cp_mb_s": round(mb / cp_s, 1), "floor_mb_s": round(mb / floor_s, 1),
            "floor_percent_of_cp": round(100 * cp_s / floor_s, 1),
            "floor_after_sign_in_mb_s": round(mb / (floor_s - sign_in_s), 1),
            "sign_in_s": round(sign_in_s, 3), "floor_s": [round(t, 3) for t in floor],
            "cp_s": [round(t, 3) for t in cp],
            "server_cpu_s": [round(t, 2) for t in server_cpu], "client_cpu_s": [round(t, 2) for t in client_cpu],
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ff-bench-ssh-floor-") as work:
        result = asyncio.run(measure(Path(work), args.mb, args.rounds))
    print(json.dumps(result, indent=2))
    print(f"cp {result['cp_mb_s']} MB/s; asyncssh's transport alone {result['floor_mb_s']} MB/s, sign-in included: "
          f"{result['floor_percent_of_cp']} % of cp (the most an SFTP upload through it could reach)")


if __name__ == "__main__":
    main()
