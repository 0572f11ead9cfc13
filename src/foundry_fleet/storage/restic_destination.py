"""A restic repository as the backup destination of a fleet on directory storage (any restic backend:
a local path, sftp:, s3:, rest: ...). Restic deduplicates, so each snapshot costs only what changed.

Each fleet snapshot becomes one restic snapshot, tagged `instance:<id>` and `snapshot:<name>`, with the
fleet snapshot's time, made from inside the snapshot's directory (so paths inside are the data's own).
The repository's password is a file (0600) named in the config; it is handed to restic as a file,
never on a command line or in the log.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput
from foundry_fleet.private_files import check_private_file
from foundry_fleet.storage.base import DestinationOffline

_NO_REPO_MARKERS = ("is there a repository at the following location", "repository does not exist",
                    "unable to open config file")
_OFFLINE_MARKERS = ("connection refused", "no route to host", "network is unreachable", "timeout",
                    "temporary failure in name resolution", "no such host")


class ResticDestination:
    def __init__(self, target: str, password_file: Path | None, snapshot_path: Callable[[str, str], Path],
                 snapshot_time: Callable[[str, str], float], restic: str = "restic") -> None:
        if password_file is None:
            raise InvalidInput(f"backup destination {target} is a restic repository and needs password_file",
                               "write the repository's password into a file (chmod 600) and name it in fleet.toml")
        self.target = target
        self.password_file = Path(password_file)
        self.snapshot_path = snapshot_path  # (instance, name) -> the fleet snapshot's directory
        self.snapshot_time = snapshot_time
        self.restic = restic
        self._ready = False

    # the repository -----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        try:  # restic reads the file itself; it must be fit to hold a secret
            check_private_file(self.password_file, "restic password file",
                               "password_file of the destination in fleet.toml")
        except InvalidInput as e:  # a failure of this destination's round, reported with what to do
            raise ExternalFailure(e.message, e.hint) from None
        return {**os.environ, "RESTIC_REPOSITORY": self.target, "RESTIC_PASSWORD_FILE": str(self.password_file),
                "RESTIC_CACHE_DIR": str(self.password_file.parent / ".restic-cache"), "LC_ALL": "C"}

    def _run(self, *args: str, cwd: Path | None = None, timeout: float = 24 * 3600) -> str:
        try:
            done = subprocess.run([self.restic, *args], capture_output=True, text=True, env=self._env(), cwd=cwd,
                                  stdin=subprocess.DEVNULL, timeout=timeout)
        except FileNotFoundError:
            raise ExternalFailure("restic is not installed (needed for backup destinations on directory storage)",
                                  "install it (Debian: apt-get install restic)") from None
        except subprocess.TimeoutExpired:
            raise DestinationOffline(f"backup destination {self.target} did not answer within {timeout:.0f} s",
                                     "it is retried every round; its snapshots are kept meanwhile") from None
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()
            # restic's reason is its "Fatal: ..." line; what follows it is advice such as the repository's location.
            fatal = [line for line in said if line.startswith("Fatal:")]
            message = fatal[0] if fatal else said[-1] if said else f"exit {done.returncode}"
            lowered = done.stderr.lower()
            if any(m in lowered for m in _OFFLINE_MARKERS):
                raise DestinationOffline(f"backup destination {self.target} does not answer: {message}",
                                         "it is retried every round; its snapshots are kept meanwhile")
            raise ResticFailed(f"`restic {args[0]}` on {self.target} failed: {message}", done.stderr)
        return done.stdout

    def check_online(self, timeout: float | None = None) -> bool:
        """Whether the repository is there (False: not yet, the first round makes it), opened with its
        password as a round would; DestinationOffline when it does not answer (within `timeout` seconds),
        ExternalFailure when it refuses (a wrong password, a damaged repository). Makes nothing."""
        try:
            self._run("cat", "config", timeout=timeout or 24 * 3600)
        except ResticFailed as e:
            if any(m in e.stderr.lower() for m in _NO_REPO_MARKERS):
                return False
            raise
        return True

    def _ensure_repository(self) -> None:
        if self._ready:
            return
        try:
            self._run("cat", "config")
        except ResticFailed as e:
            if not any(m in e.stderr.lower() for m in _NO_REPO_MARKERS):
                raise
            self._run("init")
        self._ready = True

    # the destination verbs ----------------------------------------------------------------

    def _listing(self, instance: str) -> list[dict]:
        self._ensure_repository()
        found = json.loads(self._run("snapshots", "--json", "--tag", f"instance:{instance}") or "[]")
        return sorted(found or [], key=lambda s: s.get("time", ""))

    @staticmethod
    def _name(entry: dict) -> str | None:
        return next((t[len("snapshot:"):] for t in entry.get("tags") or [] if t.startswith("snapshot:")), None)

    def snapshots(self, instance: str) -> list[str]:
        return [n for n in (self._name(e) for e in self._listing(instance)) if n]

    def send(self, instance: str, source_names: Sequence[str], base: str | None, latest: str) -> int:
        """Back up each snapshot after `base` up to `latest` that the repository lacks; returns bytes added."""
        there = set(self.snapshots(instance))
        start = source_names.index(base) + 1 if base in source_names else 0
        added = 0
        for name in source_names[start:source_names.index(latest) + 1]:
            if name in there:
                continue
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.snapshot_time(instance, name)))
            out = self._run("backup", "--json", "--host", "foundry-fleet", "--tag", f"instance:{instance}",
                            "--tag", f"snapshot:{name}", "--time", when, "--exclude", ".snapshot.json", ".",
                            cwd=self.snapshot_path(instance, name))
            for line in out.splitlines():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("message_type") == "summary":
                    added += int(msg.get("data_added", 0))
        return added

    def destroy(self, instance: str, names: Sequence[str]) -> None:
        doomed = set(names)
        ids = [e["id"] for e in self._listing(instance) if self._name(e) in doomed]
        if ids:
            self._run("forget", "--prune", *ids)


class ResticFailed(ExternalFailure):
    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message, "check the repository with `restic check`, then the next round retries")
        self.stderr = stderr
