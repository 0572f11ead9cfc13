"""The VM lane on the host: the image (built once, cached outside the checkout), the share each run
hands the guest, and the boot that runs the guest's scenarios under QEMU.

The image holds what changes rarely (Debian's packages, OpenZFS built for the guest's kernel, the
fleet's dependencies); the share holds what changes with every commit (the fleet's wheel, the
scenarios, the stand-in Foundry releases). The guest's lane unit mounts the share, runs `entry`,
leaves `out/exit-code` and powers off.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LANE = Path(__file__).resolve().parent
REPO = LANE.parent
RUN_LOCK = REPO / "requirements" / "run.lock"
# Outside every checkout, so a fresh clone (CI's) reuses an image built by an earlier run.
CACHE = Path(os.environ.get("FOUNDRY_FLEET_VM_CACHE", "/var/cache/foundry-fleet/vm"))
# What the image is made of: a change to any of these files builds a new one.
IMAGE_INPUTS = ("build-image", "apt_mirrors.py", "guest/foundry-fleet-lane.service", "guest/lane-run",
                "guest/setup-image")
# The guest runs the scenarios with these, in a venv of its own (the fleet's venv stays as a user's).
LANE_REQUIREMENTS = ("pytest>=8,<10", "pytest-timeout>=2.3,<3", "httpx>=0.27,<0.29", "websockets>=12,<18")
KEEP_IMAGES = 2


class LaneError(RuntimeError):
    """The lane could not get as far as running the scenarios; the message says where it stopped."""


@dataclass(frozen=True)
class Image:
    path: Path

    @property
    def disk(self) -> Path:
        return self.path / "disk.img"

    @property
    def kernel_version(self) -> str:
        return (self.path / "kernel-version").read_text().strip()


def _run(argv: list[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise LaneError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def build_wheels(dest: Path) -> tuple[Path, Path]:
    """The fleet's wheel with every dependency (fleet-wheels), and the scenarios' tools (lane-wheels).
    The dependencies are the versions of the run lock (checked by their hashes), as `make run` installs."""
    fleet, lane = dest / "fleet-wheels", dest / "lane-wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    _run([*pip, "--require-hashes", "-w", str(fleet), "-r", str(RUN_LOCK)], "building the fleet's locked dependencies")
    _run([*pip, "--no-deps", "-w", str(fleet), str(REPO)], "building the fleet's wheel")
    _run([*pip, "-w", str(lane), *LANE_REQUIREMENTS], "building the scenarios' wheels")
    return fleet, lane


def fleet_wheel(fleet_wheels: Path) -> Path:
    found = sorted(fleet_wheels.glob("foundry_fleet-*.whl"))
    if len(found) != 1:
        raise LaneError(f"expected one foundry_fleet wheel in {fleet_wheels}, found {[p.name for p in found]}")
    return found[0]


def _candidate_kernel() -> str:
    """The guest kernel the mirror would give now (a new one builds a new image), if apt knows."""
    proc = subprocess.run(["apt-cache", "policy", "linux-image-amd64"], capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.strip().startswith("Candidate:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def image_key(fleet_wheels: Path, lane_wheels: Path, kernel: str | None = None) -> str:
    digest = hashlib.sha256()
    for name in IMAGE_INPUTS:
        digest.update(name.encode() + b"\0" + (LANE / name).read_bytes() + b"\0")
    dependencies = sorted(p.name for p in fleet_wheels.glob("*.whl") if not p.name.startswith("foundry_fleet-"))
    digest.update("\n".join(dependencies).encode() + b"\0")
    digest.update("\n".join(sorted(p.name for p in lane_wheels.glob("*.whl"))).encode() + b"\0")
    digest.update((kernel if kernel is not None else _candidate_kernel()).encode())
    return digest.hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # one build at a time; a second run waits and then reuses it
        yield


def ensure_image(fleet_wheels: Path, lane_wheels: Path, log: Path) -> tuple[Image, bool]:
    """The image for these inputs, built when missing; (image, built now). Older images are pruned."""
    key = image_key(fleet_wheels, lane_wheels)
    target = CACHE / f"bookworm-{key}"
    with _locked(CACHE / ".lock"):
        built = False
        if not (target / "disk.img").is_file():
            for tool in ("mmdebstrap", "mkfs.ext4"):
                if shutil.which(tool) is None:
                    raise LaneError(f"{tool} is not installed (make test-vm installs it when run as root)")
            with log.open("w") as out:
                proc = subprocess.run([str(LANE / "build-image"), str(target), str(fleet_wheels), str(lane_wheels)],
                                      stdout=out, stderr=subprocess.STDOUT, check=False)
            if proc.returncode != 0:
                raise LaneError(f"building the image failed (exit {proc.returncode}); its log ends:\n"
                                + log.read_text()[-4000:])
            built = True
        os.utime(target)  # pruning keeps the images used last
        _prune(keep=target)
    return Image(target), built


def _prune(keep: Path) -> None:
    images = sorted((p for p in CACHE.glob("bookworm-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in [p for p in images if p != keep][: max(0, len(images) - KEEP_IMAGES)]:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class Boot:
    exit_code: int | None  # the entry's, as the guest wrote it; None: the guest never got that far
    seconds: float
    console: str
    timed_out: bool


def boot(image: Image, share: Path, timeout: float, memory_mb: int = 3072, cpus: int = 2) -> Boot:
    """Boot the image with `share` as the guest's /lane, wait for it to power off (or kill it at
    `timeout`), and return what the guest left. Writes to the disk go to a throw-away overlay."""
    out = share / "out"
    out.mkdir(parents=True, exist_ok=True)
    console = out / "console.log"
    argv = [
        "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-m", str(memory_mb), "-smp", str(cpus), "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(image.path / "vmlinuz"), "-initrd", str(image.path / "initrd.img"),
        # cgroup v2 only, as current Debian and Ubuntu boot; a panic powers off instead of hanging.
        "-append", "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 panic=-1 quiet",
        "-drive", f"file={image.disk},format=raw,if=virtio,cache=unsafe", "-snapshot",
        "-virtfs", f"local,path={share},mount_tag=host0,security_model=none,id=host0",
    ]
    started = time.monotonic()
    with console.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
    code_file = out / "exit-code"
    code = int(code_file.read_text().strip()) if code_file.is_file() else None
    return Boot(code, time.monotonic() - started, console.read_text(errors="replace"), timed_out)


@dataclass(frozen=True)
class GuestRun:
    boot: Boot
    share: Path
    cases: dict[str, ET.Element]  # "file.py::test_name" -> its JUnit testcase
    selected: str | None = None  # the guest ran only these (pytest arguments), not every scenario

    def entry_log(self) -> str:
        path = self.share / "out" / "entry.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def junit_cases(junit: Path) -> dict[str, ET.Element]:
    if not junit.is_file():
        return {}
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        found[f"{module}.py::{case.get('name')}"] = case
    return found
