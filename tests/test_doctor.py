"""`foundry-fleet doctor`: each check against what it checks, for real where it can run here (ports held
by this process, the disk, bubblewrap, cgroups, a Node.js, restic, ZFS pools on zfs-fuse, a fleet with its
daemon and Caddy up), and with answers given for what needs the internet or another host (DNS, the clock);
then the command: its output, --json, and its exit code."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry_fleet.config import NodeSection
from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.runtime import sandbox
from foundry_fleet.runtime.base import Capability
from foundry_fleet.runtime.cgroups import CgroupHost
from foundry_fleet.runtime.host_ports import Listener, listeners
from foundry_fleet.services.doctor import Check, DoctorReport, Status
from foundry_fleet.services.doctor.backups import DestinationProbe, destination_checks
from foundry_fleet.services.doctor.clock import ClockReading, clock_check, kernel_clock
from foundry_fleet.services.doctor.dns import (
    HostAddresses, dns_checks, interface_addresses, judge, system_resolver,
)
from foundry_fleet.services.doctor.edge import edge_checks, scale_check
from foundry_fleet.services.doctor.ports import port_check, port_in_use
from foundry_fleet.services.doctor.report import run_groups
from foundry_fleet.services.doctor.space import SpaceLimits, disk_checks, zfs_check
from foundry_fleet.services.doctor.tools import cgroups_check, node_checks, sandbox_check
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.node_binaries import resolve_node
from foundry_fleet.storage.restic_destination import ResticDestination
from foundry_fleet.storage.zfs import ZfsStorage
from foundry_fleet.storage.zfs_destination import ZfsDestination
from foundry_fleet.wiring.doctor import probe_cgroups
from tests.support.cli import run_main
from tests.support.harness import FleetHarness
from tests.support.ports import port_block

PASS, WARN, FAIL, SKIP = Status.PASS, Status.WARN, Status.FAIL, Status.SKIP
MIB = 1024 * 1024
HERE = "93.184.216.34"  # this host's public address in the DNS tests (never contacted)
HERE6 = "2606:2800:220:1::5"


# DNS ---------------------------------------------------------------------------------------------


def table_resolver(records: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    """A resolver answering from a table: `*.domain` answers every name under it, as a wildcard record."""

    def resolve(name: str) -> list[str]:
        if name in records:
            return records[name]
        wildcard = "*." + name.partition(".")[2]
        if wildcard in records:
            return records[wildcard]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    return resolve


PUBLIC_HOST = HostAddresses.of(["127.0.0.1", "10.0.0.7", HERE, HERE6, "fe80::1"])


def test_dns_passes_when_the_wildcard_and_the_fleet_host_resolve_to_this_host_only() -> None:
    resolve = table_resolver({"*.games.example.org": [HERE, HERE6]})
    checks = dns_checks("games.example.org", "fleet", resolve, PUBLIC_HOST, probe_label="doctor-test")
    assert [(c.name, c.status) for c in checks] == [("dns *.games.example.org", PASS),
                                                    ("dns fleet.games.example.org", PASS)], checks
    assert checks[0].detail == f"doctor-test.games.example.org resolves to {HERE}, {HERE6} (this host)"


def test_a_missing_wildcard_fails_with_the_record_to_add_though_the_fleet_host_has_one() -> None:
    resolve = table_resolver({"fleet.games.example.org": [HERE]})
    wildcard, fleet_host = dns_checks("games.example.org", "fleet", resolve, PUBLIC_HOST)
    assert wildcard.status is FAIL and "does not resolve (no such name)" in wildcard.detail
    assert wildcard.detail.startswith("doctor-") and wildcard.name == "dns *.games.example.org"
    assert wildcard.fix == f"add a DNS record *.games.example.org -> {HERE}, {HERE6} (A for IPv4, AAAA for IPv6) at " \
                           "the domain's DNS provider"
    assert fleet_host.status is PASS


def test_a_record_naming_another_machine_as_well_fails_naming_it() -> None:
    resolve = table_resolver({"*.example.org": [HERE, "2001:db8::99"]})
    check = dns_checks("example.org", "fleet", resolve, PUBLIC_HOST)[0]
    assert check.status is FAIL and "2001:db8::99 is not this host" in check.detail
    assert check.fix == f"remove the records of {check.detail.split()[0]} that name 2001:db8::99"


def test_a_name_resolving_elsewhere_fails_on_a_public_host_and_warns_behind_nat_until_told() -> None:
    resolve = table_resolver({"*.example.org": ["198.51.100.9"]})
    public = dns_checks("example.org", "fleet", resolve, PUBLIC_HOST)[0]
    assert public.status is FAIL and f"which is not this host (its addresses: {HERE}, {HERE6})" in public.detail
    private_only = HostAddresses.of(["127.0.0.1", "10.0.0.7", "fd00::2"])
    behind_nat = dns_checks("example.org", "fleet", resolve, private_only)[0]
    assert behind_nat.status is WARN and "only private addresses" in behind_nat.detail
    assert "`foundry-fleet doctor --public-address 198.51.100.9`" in (behind_nat.fix or "")
    told = dns_checks("example.org", "fleet", resolve, HostAddresses.of(private_only.own, ["198.51.100.9"]))
    assert [c.status for c in told] == [PASS, PASS]


def test_an_answer_too_slow_fails_after_the_timeout_and_localhost_domains_are_not_applicable() -> None:
    def slow(*args: object, **kwargs: object) -> list[object]:
        time.sleep(3)
        return []

    resolve = system_resolver(timeout=0.2, getaddrinfo=slow)
    started = time.monotonic()
    check = dns_checks("example.org", "fleet", resolve, PUBLIC_HOST)[0]
    assert time.monotonic() - started < 2
    assert check.status is FAIL and "the resolver gave no answer within 0 s" in check.detail
    assert "/etc/resolv.conf" in (check.fix or "")
    for domain in ("localhost", "games.localhost"):
        [skip] = dns_checks(domain, "fleet", resolve, PUBLIC_HOST)
        assert skip.status is SKIP and f"[fleet] domain is {domain}" in skip.detail


def test_the_real_resolver_and_this_hosts_real_addresses() -> None:
    """localhost through getaddrinfo (/etc/hosts): a loopback answer, which players elsewhere never reach;
    the interfaces' addresses as `ip address` lists them."""
    answer = system_resolver()("localhost")
    assert "127.0.0.1" in answer
    own = interface_addresses()
    check = judge("dns localhost", "localhost", answer, HostAddresses.of(own))
    assert check.status is FAIL and "a loopback address" in check.detail
    if shutil.which("ip"):
        listed = json.loads(subprocess.run(["ip", "-j", "address", "show"], capture_output=True, text=True,
                                           check=True).stdout)
        expected = {ipaddress.ip_address(a["local"]) for i in listed for a in i.get("addr_info", [])}
        assert own == expected


# ports -------------------------------------------------------------------------------------------


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port this test process listens on (IPv6 and IPv4)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_port_held_by_another_process_fails_naming_it_and_a_free_one_passes(held_port: int) -> None:
    me = Path("/proc/self/comm").read_text().strip()
    [found] = listeners(held_port)
    assert (found.address, found.pids) == ("127.0.0.1", (os.getpid(),))
    check = port_check("https", "https_port", held_port, caddy_pid=None)
    assert check.status is FAIL
    assert check.detail == f"held by {me} (pid {os.getpid()}): the fleet's Caddy cannot listen there"
    assert check.fix == f"stop it (e.g. `systemctl disable --now {me}`), or give the fleet another port: " \
                        "[edge] https_port in fleet.toml"
    port = free_port()
    free = port_check("http", "http_port", port, caddy_pid=None)
    assert (free.name, free.status, free.detail) == (f"port {port} (http)", PASS,
                                                     "free: the fleet's Caddy can listen there")


def test_a_port_held_by_the_fleets_caddy_passes(held_port: int) -> None:
    check = port_check("http", "http_port", held_port, caddy_pid=os.getpid())
    assert (check.status, check.detail) == (PASS, f"held by the fleet's Caddy (pid {os.getpid()})")


def test_up_names_what_holds_a_port_in_one_line_and_lets_its_own_caddy_hold_it(held_port: int) -> None:
    me = Path("/proc/self/comm").read_text().strip()
    assert port_in_use("https", "https_port", held_port) == (
        f"port {held_port} (https) is in use by {me} (pid {os.getpid()}): set [edge] https_port in fleet.toml, "
        "or init --https-port")
    assert port_in_use("https", "https_port", held_port, caddy_pid=os.getpid()) is None
    assert port_in_use("web", "web_port", free_port()) is None
    hidden = [Listener("0.0.0.0", 8080, 1000, ())]
    assert port_in_use("http", "http_port", 8080, listening=lambda port: hidden) == (
        "port 8080 (http) is in use by a process of uid 1000 (run as root to see which): set [edge] http_port "
        "in fleet.toml, or init --http-port")


def test_a_port_this_user_may_not_bind_or_whose_holder_it_cannot_see_fails_saying_so() -> None:
    denied = port_check("http", "http_port", 80, None, listening=lambda port: [], bind=lambda port: errno.EACCES)
    assert denied.status is FAIL and "may not listen on a port this low" in denied.detail
    assert "net.ipv4.ip_unprivileged_port_start=80" in (denied.fix or "")
    hidden = [Listener("0.0.0.0", 443, 1000, ())]
    unknown = port_check("https", "https_port", 443, None, listening=lambda port: hidden)
    assert unknown.status is FAIL and "cannot look into (socket of uid 1000)" in unknown.detail
    maybe_ours = port_check("https", "https_port", 443, 4242, listening=lambda port: hidden)
    assert maybe_ours.status is WARN and "run `foundry-fleet doctor` as root" in (maybe_ours.fix or "")


# the edge and its certificates ------------------------------------------------------------------


def cert(host: str, state: str = "valid", not_after: str | None = "2031-01-01") -> dict[str, object]:
    return {"host": host, "state": state, "not_after": not_after, "issuer": "x", "detail": None}


def test_certificates_of_running_instances_and_the_fleet_host_are_judged_as_the_watch_does() -> None:
    status = {
        "edge": {"in_sync": True, "host_conflicts": []},
        "instances": [{"name": "alice", "state": "running", "hosts": ["alice.example.org"]},
                      {"name": "bob", "state": "stopped", "hosts": ["bob.example.org"]}],
        "hosts": [cert("fleet.example.org"), cert("alice.example.org"), cert("bob.example.org", "none", None)],
    }
    now = time.mktime((2030, 1, 1, 0, 0, 0, 0, 0, 0))
    edge, certificates = edge_checks(status, "acme", "fleet.example.org", Path("/x/caddy.log"), now=now)
    assert edge.status is PASS
    assert (certificates.status, certificates.detail) == (PASS, "2 hosts serve a valid certificate, the first "
                                                                "expiring 2031-01-01")
    status["hosts"][1] = cert("alice.example.org", "invalid")
    status["hosts"][1]["detail"] = "self-signed certificate"
    soon = edge_checks(status, "acme", "fleet.example.org", Path("/x/caddy.log"), now=now)[1]
    assert soon.status is FAIL and soon.detail == "alice.example.org: invalid (self-signed certificate)"
    assert "ports 80 and 443" in (soon.fix or "") and "/x/caddy.log" in (soon.fix or "")
    expiring = {**status, "hosts": [cert("fleet.example.org", not_after="2030-01-03")]}
    assert edge_checks(expiring, "acme", "fleet.example.org", Path("x"), now=now)[1].status is FAIL
    assert edge_checks(expiring, "internal", "fleet.example.org", Path("x"), now=now)[1].status is PASS
    out_of_date = {**status, "edge": {"in_sync": False, "problem": "Caddy refused it"}}
    assert edge_checks(out_of_date, "acme", "fleet.example.org", Path("x"))[0].detail == \
        "Caddy does not serve the current configuration: Caddy refused it"
    assert [c.status for c in edge_checks(None, "acme", "fleet.example.org", Path("x"))] == [SKIP, SKIP]


def test_a_large_fleet_is_told_when_its_tls_mode_makes_every_push_check_every_certificate() -> None:
    """internal and acme: Caddy checks each managed name at every load (805 ms at 5,000, bench/RESULTS.md);
    on-demand manages none. Past 1,000 hosts the doctor warns, with the setting to change."""
    assert scale_check("on-demand", 20_000).status is PASS
    assert scale_check("internal", 1000).status is PASS
    large = scale_check("acme", 5001)
    assert large.status is WARN and "5,001 hosts" in large.detail
    assert 'tls = "on-demand"' in (large.fix or "")


def test_the_doctor_counts_every_host_the_edge_serves() -> None:
    from foundry_fleet.wiring.doctor import _host_count

    status = {"instances": [{"hosts": ["a.example.org", "games.example.org"]}, {"hosts": ["b.example.org"]},
                            {"hosts": []}]}
    assert _host_count(status) == 4  # and the fleet's own host


# storage and disk space --------------------------------------------------------------------------


def test_a_healthy_pool_passes_a_nearly_full_one_and_a_missing_one_fail(zfs_base: str, tmp_path: Path) -> None:
    from tests.support.zfs import zfs

    zfs("create", "-o", "mountpoint=none", zfs_base)
    pool = zfs_base.split("/")[0]
    storage = ZfsStorage(tmp_path / "root", zfs_base)
    limits = SpaceLimits(fail_bytes=64 * MIB, warn_bytes=128 * MIB)
    healthy = zfs_check(None, storage.pool_space(), limits)
    assert (healthy.name, healthy.status) == (f"zfs pool {pool}", PASS), healthy
    assert healthy.detail.startswith(f"{pool} ONLINE, ") and f"available to {zfs_base}" in healthy.detail

    zfs("set", "quota=32M", zfs_base)  # the fleet's datasets may write no more than that
    full = zfs_check("pool-b", storage.pool_space(), limits)
    assert (full.name, full.status) == (f"zfs pool {pool} (home pool-b)", FAIL)
    assert full.detail.endswith(": nearly full") and "foundry-fleet backup status" in (full.fix or "")

    with pytest.raises(ExternalFailure) as missing:
        ZfsStorage(tmp_path / "root", "fftestnosuchpool/fleet").pool_space()
    gone = zfs_check(None, missing.value, limits)
    assert gone.status is FAIL and "'fftestnosuchpool' is not available" in gone.detail
    assert gone.fix == "import it (`zpool import fftestnosuchpool`), or set [storage] zfs_base"


def test_a_degraded_pool_warns(zfs_daemon: None, tmp_path: Path) -> None:
    from tests.support.zfs import zpool

    name = f"fftest{os.getpid()}xd{os.urandom(2).hex()}"
    disks = [tmp_path / "a.img", tmp_path / "b.img"]
    for disk in disks:
        subprocess.run(["truncate", "-s", "64M", str(disk)], check=True)
    zpool("create", "-f", "-m", "none", name, "mirror", *map(str, disks))
    try:
        zpool("offline", name, str(disks[1]))
        check = zfs_check(None, ZfsStorage(tmp_path, name).pool_space(), SpaceLimits(fail_bytes=MIB, warn_bytes=MIB))
        assert check.status is WARN and "DEGRADED" in check.detail and "lost redundancy" in check.detail
        assert check.fix == f"see `zpool status -x {name}` and replace the failed device"
    finally:
        zpool("destroy", "-f", name)


def test_disk_space_is_read_once_per_file_system_and_judged_by_the_limits(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    not_yet = tmp_path / "releases"  # made with the first release: judged by where it will be
    [check] = disk_checks([("the fleet root", tmp_path), ("the release cache", not_yet)],
                          SpaceLimits(fail_bytes=1, fail_percent=0, warn_bytes=1, warn_percent=0))
    assert (check.name, check.status) == ("disk space of the fleet root", PASS)
    assert check.detail.startswith(f"{tmp_path}: ") and f"({100 * usage.free / usage.total:.0f} %)" in check.detail
    low = disk_checks([("x", tmp_path)], SpaceLimits(fail_bytes=1, fail_percent=0, warn_bytes=usage.free + 10 ** 12,
                                                     warn_percent=0))[0]
    full = disk_checks([("x", tmp_path)], SpaceLimits(fail_bytes=usage.free + 10 ** 12))[0]
    assert (low.status, full.status) == (WARN, FAIL) and full.fix and "du -xsh" in full.fix


# the runtime's tools -----------------------------------------------------------------------------


def test_the_sandbox_check_runs_bubblewrap_for_real() -> None:
    missing = sandbox_check(sandbox.probe(None))
    assert missing.status is FAIL and "apt install bubblewrap" in missing.detail + (missing.fix or "")
    broken = sandbox_check(sandbox.probe("/bin/false"))
    assert broken.status is FAIL and "is installed but fails here" in broken.detail
    bwrap = sandbox.find_bwrap()
    works = bwrap is not None and subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--proc", "/proc",
                                                  "--dev", "/dev", "true"], capture_output=True).returncode == 0
    assert sandbox_check(sandbox.probe(bwrap)).status is (PASS if works else FAIL)


def test_the_cgroup_probe_leaves_no_group_it_made_behind() -> None:
    host = CgroupHost(f"foundry-fleet-doctor{os.getpid()}")
    parents = {host.parent_dir(c) for c in ("memory", "cpu", "pids")}
    lines = probe_cgroups(host)
    assert [line.name for line in lines] == ["cgroup-memory", "cgroup-cpu", "cgroup-pids"]
    assert not any(p.exists() for p in parents)
    check = cgroups_check(lines)
    assert check.status is (PASS if all(line.available for line in lines) else FAIL), check
    assert cgroups_check([Capability("cgroup-pids", False, "cgroup v2: controller not enabled")]).detail == \
        "pids: cgroup v2: controller not enabled: those limits are not enforced"


def test_a_node_per_release_major_is_found_and_checked_by_running_it(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.write_text("#!/bin/sh\necho v20.11.1\n")
    node.chmod(0o755)
    section = NodeSection(default=str(node))
    checks = node_checks([13, 14, 13], lambda generation: resolve_node(section, generation))
    assert [(c.name, c.status) for c in checks] == [("node for Foundry 13", PASS), ("node for Foundry 14", FAIL)]
    assert checks[0].detail.startswith(f"{node} (Foundry 13 needs Node.js")
    assert f"but {node} is Node.js 20" in checks[1].detail and '[node] binaries."14"' in (checks[1].fix or "")
    nowhere = node_checks([13], lambda g: resolve_node(NodeSection(default=str(tmp_path / "nope")), g))[0]
    assert nowhere.status is FAIL and "was not found" in nowhere.detail
    assert node_checks([], lambda g: "x")[0].status is SKIP


# the clock ---------------------------------------------------------------------------------------


def test_the_clock_passes_synchronised_fails_not_and_warns_when_it_cannot_be_told() -> None:
    assert clock_check(ClockReading(True, "timedatectl")) == Check("clock", PASS, "synchronised (timedatectl)")
    unsynced = clock_check(ClockReading(False, "the kernel (adjtimex)"))
    assert unsynced.status is FAIL and "timedatectl set-ntp true" in (unsynced.fix or "")
    unknown = clock_check(ClockReading(None, "no adjtimex here"))
    assert unknown.status is WARN and "cannot be told: no adjtimex here" in unknown.detail
    assert isinstance(kernel_clock().synchronized, bool)  # the kernel answers on any Linux, to any user


# backup destinations -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("restic") is None, reason="needs restic (make test installs it)")
def test_a_restic_destination_is_asked_as_a_round_would_open_it(tmp_path: Path) -> None:
    password = tmp_path / "secret"
    password.write_text("right\n")
    password.chmod(0o600)
    repo = tmp_path / "repo"

    def probe(password_file: Path) -> DestinationProbe:
        dest = ResticDestination(str(repo), password_file, lambda i, n: tmp_path, lambda i, n: 0.0)
        return DestinationProbe("offsite", dest, "restic -r ... cat config")

    [empty] = destination_checks([probe(password)])
    assert (empty.status, empty.detail) == (PASS, f"{repo} answers; nothing there yet (the first backup round "
                                                  "makes it)")
    assert not repo.exists()  # asking made nothing
    env = {**os.environ, "RESTIC_PASSWORD_FILE": str(password), "RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(["restic", "-r", str(repo), "init"], env=env, capture_output=True, check=True)
    assert destination_checks([probe(password)])[0].detail == f"{repo} answers"
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong\n")
    wrong.chmod(0o600)
    refused = destination_checks([probe(wrong)])[0]
    assert refused.status is FAIL and "`restic cat` on" in refused.detail
    assert refused.fix == "try it as the fleet does: `restic -r ... cat config`"


def test_a_zfs_destination_that_is_missing_or_does_not_answer_in_time_fails(zfs_base: str, tmp_path: Path) -> None:
    here = ZfsDestination(f"{zfs_base}/offsite", lambda instance: instance)
    assert destination_checks([DestinationProbe("usb", here, "zpool list")])[0].status is PASS
    gone = ZfsDestination("fftestnosuchpool/offsite", lambda instance: instance)
    [missing] = destination_checks([DestinationProbe("usb", gone, "zpool list fftestnosuchpool")])
    assert missing.status is FAIL and "pool fftestnosuchpool is not available" in missing.detail
    assert missing.fix == "try it as the fleet does: `zpool list fftestnosuchpool`"
    slow_ssh = tmp_path / "ssh"
    slow_ssh.write_text("#!/bin/sh\nexec sleep 30\n")
    slow_ssh.chmod(0o755)
    far = ZfsDestination("backup@far.example:tank/offsite", lambda instance: instance, ssh=[str(slow_ssh)])
    started = time.monotonic()
    [silent] = destination_checks([DestinationProbe("far", far, "ssh ...")], timeout=0.5)
    assert time.monotonic() - started < 10
    assert silent.status is FAIL and "did not finish within" in silent.detail, silent
    assert destination_checks([])[0].status is SKIP


# running the checks ------------------------------------------------------------------------------


def test_a_check_that_breaks_is_one_failure_and_the_others_still_report() -> None:
    def broken() -> list[Check]:
        raise RuntimeError("boom")

    checks = run_groups([("first", lambda: [Check("a", PASS, "fine")]), ("second", broken),
                         ("third", lambda: [Check("c", SKIP, "n/a")])])
    assert [(c.name, c.status) for c in checks] == [("a", PASS), ("second", FAIL), ("c", SKIP)]
    assert checks[1].detail == "could not be checked: RuntimeError: boom"
    report = DoctorReport([Check("a", PASS, "x"), Check("b", WARN, "y", "z"), Check("c", SKIP, "w")])
    assert report.ok and report.counts() == {"pass": 1, "warn": 1, "fail": 0, "skip": 1}
    assert not DoctorReport([*report.checks, Check("d", FAIL, "v", "u")]).ok


# the command -------------------------------------------------------------------------------------


def fleet_config(tmp_path: Path, http_port: int, https_port: int) -> Path:
    """A fleet on the fake runtime (nothing of the host's runs instances), with these edge ports."""
    config = init_fleet(tmp_path / "fleet")
    text = config.read_text()
    text = text.replace("http_port = 8080", f"http_port = {http_port}").replace(
        "https_port = 8443", f"https_port = {https_port}").replace('driver = "local"', 'driver = "fake"')
    config.write_text(text)
    return config


def synchronised() -> ClockReading:
    return ClockReading(True, "timedatectl")


def test_the_command_exits_0_when_nothing_fails_and_1_when_a_check_does(
    tmp_path: Path, held_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The clock of a test host may well be unsynchronised: that is the one finding given here.
    monkeypatch.setattr("foundry_fleet.wiring.doctor.read_clock", synchronised)
    low = port_block()
    config = fleet_config(tmp_path, low, low + 1)
    code, out, err = run_main(monkeypatch, capsys, "--config", str(config), "doctor")
    assert (code, err) == (0, ""), out
    lines = out.splitlines()
    assert lines[0] == "daemon: not running (what only it can tell is skipped)"
    assert f"pass  port {low} (http): free: the fleet's Caddy can listen there" in lines
    assert "pass  clock: synchronised (timedatectl)" in lines
    assert "skip  runtime tools: the fake runtime: nothing of this host is used to run instances" in lines
    assert lines[-1].startswith("0 failed, ")

    taken = fleet_config(tmp_path / "b", low, held_port)
    code, out, err = run_main(monkeypatch, capsys, "--config", str(taken), "doctor", "--json")
    assert code == 1, out + err
    report = json.loads(out)
    assert set(report) == {"ok", "counts", "daemon", "checks"} and report["ok"] is False
    assert report["daemon"] == {"running": False, "pid": None} and report["counts"]["fail"] == 1
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in report["checks"])
    [failing] = [c for c in report["checks"] if c["status"] == "fail"]
    assert failing["name"] == f"port {held_port} (https)" and f"(pid {os.getpid()})" in failing["detail"]
    code, out, _err = run_main(monkeypatch, capsys, "--config", str(taken), "doctor")
    assert code == 1 and f"FAIL  port {held_port} (https): held by " in out and "      fix: stop it" in out


def test_the_command_without_a_fleet_says_how_to_make_one_and_refuses_a_bad_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FOUNDRY_FLEET_CONFIG", raising=False)
    code, out, err = run_main(monkeypatch, capsys, "doctor")
    assert code != 0 and "no fleet.toml found" in err and "foundry-fleet init" in err and out == ""
    config = fleet_config(tmp_path, free_port(), free_port())
    code, out, err = run_main(monkeypatch, capsys, "--config", str(config), "doctor", "--public-address", "nat")
    assert code == 2 and "--public-address 'nat' is not an IP address" in err
    code, out, err = run_main(monkeypatch, capsys, "doctor", "--help")
    assert code == 0 and out.startswith("Usage: foundry-fleet doctor") and "--public-address" in out


@pytest.mark.e2e
def test_a_fleet_up_has_its_ports_held_by_its_own_caddy_and_its_certificates_checked(fleet: FleetHarness) -> None:
    fleet.up()
    result = fleet.cli("doctor", "--json", check=False)
    report = result.json()
    assert result.code == (0 if report["ok"] else 1)
    assert report["ok"] == all(c["status"] != "fail" for c in report["checks"])
    checks = {c["name"]: c for c in report["checks"]}
    caddy_pid = int((fleet.root / "edge" / "caddy.pid").read_text().split()[0])
    settings = fleet.settings()
    for label, port in (("http", settings.edge.http_port), ("https", settings.edge.https_port)):
        assert checks[f"port {port} ({label})"]["detail"] == f"held by the fleet's Caddy (pid {caddy_pid})"
    assert checks["edge"]["status"] == "pass"
    assert checks["certificates"] == {"name": "certificates", "status": "pass", "fix": None,
                                      "detail": checks["certificates"]["detail"]}
    assert checks["certificates"]["detail"].startswith("fleet.localhost serves a valid certificate")
    assert report["daemon"]["running"] is True
    low, high = settings.instances.port_range
    assert f"instance ports {low}-{high}" in checks["iptables"]["detail"]  # the daemon's own finding

    fleet.stop_daemons()  # and its Caddy with it
    after = {c["name"]: c for c in fleet.cli("doctor", "--json", check=False).json()["checks"]}
    assert after[f"port {settings.edge.https_port} (https)"]["detail"] == "free: the fleet's Caddy can listen there"
    assert after["certificates"]["status"] == "skip"
