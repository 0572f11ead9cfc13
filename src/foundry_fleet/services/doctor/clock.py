"""Clock synchronisation: ACME certificates, TLS checks, sign-in sessions and the snapshot schedule all
trust this host's clock.

Asked of systemd (`timedatectl`, when systemd runs the host), else of the kernel (adjtimex(2): every NTP
client, chrony and ntpd included, clears STA_UNSYNC once it disciplines the clock). When neither answers,
the state is unknown: a warning, not a failure, since a clock that cannot be asked is not known to be
wrong; the fix names how to find out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.services.doctor.report import Check, failed, passed, warned

STA_UNSYNC = 0x0040
FIX = "turn on time synchronisation: `timedatectl set-ntp true` (systemd-timesyncd), or install chrony"


@dataclass(frozen=True)
class ClockReading:
    synchronized: bool | None  # None: could not be told
    source: str  # who said so ("timedatectl", "the kernel (adjtimex)"), or why nobody could


def clock_check(reading: ClockReading) -> Check:
    if reading.synchronized is None:
        return warned("clock", f"whether the clock is synchronised cannot be told: {reading.source}",
                      "check the host's NTP client with its own tool (`chronyc tracking`, `ntpq -p`), or " + FIX)
    if reading.synchronized:
        return passed("clock", f"synchronised ({reading.source})")
    return failed("clock", f"not synchronised ({reading.source}): no NTP client keeps it right", FIX)


def read_clock(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> ClockReading:
    """systemd's answer when systemd runs this host, else the kernel's."""
    timedatectl = shutil.which("timedatectl")
    if timedatectl and Path("/run/systemd/system").is_dir():  # systemd is the init: timedatectl can answer
        try:
            done = run([timedatectl, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True,
                       timeout=5)
            if done.returncode == 0 and done.stdout.strip() in ("yes", "no"):
                return ClockReading(done.stdout.strip() == "yes", "timedatectl")
        except (OSError, subprocess.TimeoutExpired):
            pass
    return kernel_clock()


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h>, with room to spare at the end for fields newer kernels add."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_spare", ctypes.c_int * 32)]


def kernel_clock() -> ClockReading:
    """adjtimex(2) with no change asked (modes 0: any user may), read for STA_UNSYNC."""
    source = "the kernel (adjtimex)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = _Timex()
        if libc.adjtimex(ctypes.byref(timex)) == -1:
            return ClockReading(None, f"adjtimex(2) failed (errno {ctypes.get_errno()}) and systemd is not here")
    except (OSError, AttributeError) as e:
        return ClockReading(None, f"neither systemd's timedatectl nor adjtimex(2) is available here ({e})")
    return ClockReading(not timex.status & STA_UNSYNC, source)
