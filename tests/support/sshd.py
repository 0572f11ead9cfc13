"""A real sshd on a loopback port that lets in one key, as root: the far side of a pool driven over ssh
(a backup destination, a Nomad node's home). Stopping it is that host going away; starting it again, the
host coming back (same port, same keys)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.harness import wait_until
from tests.support.ports import port_block

SSHD = "/usr/sbin/sshd"


class Sshd:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = port_block()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "host")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "client")], check=True)
        (directory / "authorized_keys").write_text((directory / "client.pub").read_text())
        (directory / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host'}\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nStrictModes no\nUsePAM no\nPidFile {directory / 'sshd.pid'}\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        # The shared connection's socket: a short path (a test's tmp_path would pass the 108 bytes allowed).
        self.mux_dir = Path(tempfile.mkdtemp(prefix="ff-ssh-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: subprocess.run(["ssh", *self.options(), "root@127.0.0.1", "true"],
                                          capture_output=True).returncode == 0, 20, "sshd")

    def stop(self) -> None:
        """The host goes away: the shared connection closed first (it would outlive the listener)."""
        subprocess.run(["ssh", *self.options(), "-O", "exit", "root@127.0.0.1"], capture_output=True)
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def options(self) -> list[str]:
        """ssh's options to reach this sshd as root@127.0.0.1 with the test key. Commands share one
        connection (ControlMaster), as an operator would configure it for a busy host: a new connection
        per zfs command costs a key exchange each."""
        return ["-p", str(self.port), "-i", str(self.dir / "client"), "-o", "UserKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.mux_dir / '%C'}", "-o", "ControlPersist=60"]

    def ssh_command(self) -> list[str]:
        """The `ssh_command` of fleet.toml that reaches this sshd."""
        return ["ssh", *self.options()]


@contextmanager
def running_sshd(directory: Path) -> Iterator[Sshd]:
    """An sshd started in `directory` (made if missing), stopped afterwards."""
    if shutil.which(SSHD) is None:
        pytest.fail("openssh-server is missing (make test installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    server = Sshd(directory)
    try:
        server.start()  # inside: an sshd that never answered is stopped too
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.mux_dir, ignore_errors=True)
