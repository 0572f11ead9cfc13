"""The seccomp filter every sandboxed instance runs under: a denylist of what Foundry never needs.

Foundry is a Node.js web server: it reads and writes files, talks TCP and spawns the odd helper.
It never traces other processes, mounts file systems, loads kernel modules or BPF programs, keeps
kernel keyrings, opens perf counters or builds namespaces, and each of those is a door a hostile
tenant would try (most need capabilities the instance does not have; the filter closes them even
when a kernel bug would have opened them). Everything else is allowed, so node, npm packages and
child processes keep working.

User namespaces are closed here as well: `unshare`, `setns` and `clone` with any CLONE_NEW* flag
fail with EPERM, and `clone3` (whose flags sit in a struct a BPF filter cannot read) with ENOSYS,
which makes glibc fall back to `clone`: node's threads and child processes use plain clone flags
and keep working. (bubblewrap's own `--disable-userns` needs a user namespace around the sandbox,
which would map the instance's uid to root's outside; the filter needs none.)

The filter is built with libseccomp (through `pyseccomp`, a ctypes binding) for this machine's
architecture; syscalls of the other ABIs (x32, i386 on x86_64) are killed by libseccomp's default
bad-arch action, so they cannot be used to go around it. bubblewrap loads the compiled BPF from a
descriptor (`--seccomp FD`) just before it runs the instance's command.
"""

from __future__ import annotations

import errno
import functools
import os

from foundry_fleet.runtime.base import Capability

# Denied with EPERM: (syscall names, why Foundry never needs them). Names this libseccomp does not
# know are skipped (an older library on an older kernel: the kernel lacks them too).
DENIED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ptrace", "process_vm_readv", "process_vm_writev", "kcmp"), "reading or steering other processes"),
    (("mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
      "fsconfig", "fsmount", "fspick", "mount_setattr"), "mounting"),
    (("unshare", "setns"), "namespaces, user namespaces included"),
    (("bpf",), "BPF programs"),
    (("keyctl", "add_key", "request_key"), "kernel keyrings"),
    (("perf_event_open",), "performance counters"),
    (("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module"), "kernel code"),
    (("userfaultfd",), "page-fault handling (a favourite of kernel exploits)"),
    (("open_by_handle_at", "name_to_handle_at"), "opening files by handle, around the mount tree"),
    (("io_uring_setup", "io_uring_enter", "io_uring_register"),
     "io_uring (libuv falls back to its thread pool)"),
    (("swapon", "swapoff", "reboot", "acct", "quotactl", "quotactl_fd", "syslog", "iopl", "ioperm",
      "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
      "lookup_dcookie", "vhangup"), "host administration"),
)

# clone(2) flags that make a new namespace. CLONE_NEWTIME (0x80) is left out: in clone(2) the low
# byte is the exit signal, and a time namespace can only be made with unshare or clone3.
CLONE_NEW_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

# pyseccomp's resolve_syscall answers this for a name the library does not know.
_UNKNOWN = -1


class SeccompUnavailable(RuntimeError):
    pass


def _library():
    try:
        import pyseccomp
    except (ImportError, OSError, RuntimeError) as exc:  # RuntimeError: libseccomp.so.2 not found
        raise SeccompUnavailable(f"libseccomp cannot be loaded ({exc}); apt install libseccomp2") from exc
    return pyseccomp


def denied_names() -> list[str]:
    return [name for names, _why in DENIED for name in names]


@functools.lru_cache(maxsize=1)
def compiled_filter() -> bytes:
    """The BPF program (struct sock_filter[]) bubblewrap reads from `--seccomp FD`."""
    sc = _library()
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in denied_names():
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if number == _UNKNOWN:
            continue
        flt.add_rule(sc.ERRNO(errno.EPERM), number)
    clone = sc.resolve_syscall(sc.Arch.NATIVE, "clone")
    # Argument 0 of clone is the flags word on x86_64 and aarch64 (s390 swaps the first two; the
    # fleet does not run there). One rule per flag: any of them set is enough to refuse.
    for flag in CLONE_NEW_FLAGS.values():
        flt.add_rule(sc.ERRNO(errno.EPERM), clone, sc.Arg(0, sc.MASKED_EQ, flag, flag))
    clone3 = sc.resolve_syscall(sc.Arch.NATIVE, "clone3")
    if clone3 != _UNKNOWN:
        flt.add_rule(sc.ERRNO(errno.ENOSYS), clone3)
    fd = os.memfd_create("foundry-fleet-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "rb", buffering=0) as view:
            flt.export_bpf(view)
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def filter_fd() -> int:
    """A fresh descriptor (close-on-exec) holding the compiled filter, positioned at its start.

    One per sandbox: bubblewrap reads it to the end, and a shared offset would leave the next one
    an empty filter.
    """
    program = compiled_filter()
    fd = os.memfd_create("foundry-fleet-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def capability(sandboxed: bool) -> Capability:
    if not sandboxed:
        return Capability("seccomp", False, "no sandbox, so no syscall filter: instances may trace each "
                          "other, create user namespaces and use every syscall their uid allows")
    try:
        program = compiled_filter()
    except (SeccompUnavailable, OSError) as exc:
        return Capability("seccomp", False, f"no syscall filter: {exc}; instances may create user "
                          "namespaces and use ptrace, bpf, keyctl, perf_event_open...")
    groups = ", ".join(why for _names, why in DENIED)
    return Capability(
        "seccomp", True,
        f"syscall filter ({len(program) // 8} BPF instructions): {groups} are refused; user namespaces "
        "cannot be created (unshare, setns, clone with namespace flags: EPERM; clone3: ENOSYS)",
    )
