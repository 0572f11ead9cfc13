"""`foundry-fleet trust`: make this machine's browsers trust the fleet's local CA (`[edge] tls = "internal"`),
as `caddy trust` does: the system store (Debian's ca-certificates), the user's NSS database that Chrome and
Chromium read (~/.pki/nssdb) and each Firefox profile's. What cannot be done here (not root, no certutil) is
given as the commands to run."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.domain.errors import ExternalFailure, NotFound

SYSTEM_DIR = Path("/usr/local/share/ca-certificates")  # Debian's place for local CAs (.crt only)
UPDATE_COMMAND = "update-ca-certificates"
# Only tests set these: the store directory and the command that rebuilds the system's bundle, so a test
# never touches the real system store.
SYSTEM_DIR_ENV = "FOUNDRY_FLEET_TRUST_SYSTEM_DIR"
UPDATE_COMMAND_ENV = "FOUNDRY_FLEET_TRUST_UPDATE_COMMAND"


@dataclass(frozen=True)
class TrustStep:
    store: str  # which trust store, as a person calls it
    commands: tuple[tuple[str, ...], ...]
    blocked: str | None = None  # why it cannot be carried out here; then its commands are for the person

    def shown(self) -> list[str]:
        return [shlex.join(command) for command in self.commands]


@dataclass(frozen=True)
class TrustSetup:
    """Where things are on this machine; `of_this_machine` reads them, tests pass their own."""

    home: Path
    system_dir: Path = SYSTEM_DIR
    update_command: tuple[str, ...] = (UPDATE_COMMAND,)
    is_root: bool = False
    certutil: str | None = None

    @classmethod
    def of_this_machine(cls) -> TrustSetup:
        return cls(home=Path(os.environ.get("HOME") or Path.home()),
                   system_dir=Path(os.environ.get(SYSTEM_DIR_ENV) or SYSTEM_DIR),
                   update_command=tuple(shlex.split(os.environ.get(UPDATE_COMMAND_ENV) or UPDATE_COMMAND)),
                   is_root=os.geteuid() == 0, certutil=shutil.which("certutil"))


def nickname(fleet_id: str) -> str:
    return f"foundry-fleet {fleet_id} local CA"


def firefox_profiles(home: Path) -> list[Path]:
    """Profiles with an NSS database of their own (cert9.db), as Firefox and its snap keep them."""
    found: list[Path] = []
    for base in (home / ".mozilla" / "firefox", home / "snap" / "firefox" / "common" / ".mozilla" / "firefox"):
        if base.is_dir():
            found += sorted(p.parent for p in base.glob("*/cert9.db"))
    return found


def trust_plan(ca_root: Path, fleet_id: str, setup: TrustSetup, uninstall: bool = False) -> list[TrustStep]:
    """The steps, one per store. Installing needs the CA to exist: it is made by Caddy on the first `up`."""
    if not uninstall and not ca_root.is_file():
        raise NotFound(f"the fleet's local CA does not exist yet ({ca_root})",
                       "start the fleet once with `up`: its Caddy makes the CA on its first start")
    name = nickname(fleet_id)
    certutil = setup.certutil or "certutil"
    no_certutil = None if setup.certutil else "certutil is not installed (Debian: apt-get install libnss3-tools)"
    stored = setup.system_dir / f"foundry-fleet-{fleet_id}.crt"
    if uninstall:
        system = (("rm", "-f", str(stored)), (*setup.update_command, "--fresh"))
    else:
        system = (("install", "-m", "0644", str(ca_root), str(stored)), setup.update_command)
    steps = [TrustStep("system store", system, None if setup.is_root else "needs root")]

    def nss(store: str, db: Path, make: bool) -> TrustStep:
        where = f"sql:{db}"
        if uninstall:
            commands: tuple[tuple[str, ...], ...] = ((certutil, "-D", "-d", where, "-n", name),)
        else:
            made = () if (db / "cert9.db").exists() or not make else (
                ("mkdir", "-p", str(db)), (certutil, "-N", "-d", where, "--empty-password"))
            commands = (*made, (certutil, "-A", "-d", where, "-n", name, "-t", "C,,", "-i", str(ca_root)))
        return TrustStep(store, commands, no_certutil)

    nssdb = setup.home / ".pki" / "nssdb"
    if not uninstall or (nssdb / "cert9.db").exists():
        steps.append(nss("Chrome/Chromium (NSS, ~/.pki/nssdb)", nssdb, make=True))
    steps += [nss(f"Firefox profile {profile.name}", profile, make=False) for profile in firefox_profiles(setup.home)]
    return steps


Run = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def carry_out(steps: Sequence[TrustStep], uninstall: bool = False, run: Run = _run) -> list[str]:
    """Each step that can be done here, done; the lines to show the person (the others' commands)."""
    said: list[str] = []
    for step in steps:
        if step.blocked:
            said.append(f"{step.store}: {step.blocked}; run:")
            said += [f"  {line}" for line in step.shown()]
            continue
        for command in step.commands:
            done = run(command)
            # Removing what is not there is not a failure: uninstall runs on stores that never had it.
            if done.returncode != 0 and not (uninstall and command[1:2] == ("-D",)):
                raise ExternalFailure(f"{step.store}: `{shlex.join(command)}` failed: "
                                      f"{(done.stderr or done.stdout).strip() or f'exit {done.returncode}'}")
        said.append(f"{step.store}: {'removed' if uninstall else 'trusted'}")
    return said
