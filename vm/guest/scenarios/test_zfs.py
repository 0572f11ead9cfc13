"""The ZFS driver on OpenZFS 2, as on real hosts: `storage init --zfs`, installs that are clones of the
release, the disk limit as a quota, snapshots, the tenant's backup view through `.zfs/snapshot`
(which zfs-fuse lacks), restore, and `send -I` replication to a second pool."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from lanekit import daemon, in_instance, new_fleet, release_zip, run, wait_until, zfs_pool

OWNER = "123456789012345678"
MIB = 1024 * 1024


def zfs(*args: str) -> str:
    return run("zfs", *args).stdout.strip()


def test_openzfs_installs_quotas_snapshots_backup_view_restore_and_replication() -> None:
    zfs_pool("tank")
    zfs_pool("vault")
    fleet = new_fleet(Path("/srv/fleet-zfs"), **{"disk_mb = 0": "disk_mb = 64"})
    with fleet.config.open("a") as f:
        f.write('\n[[backups.destinations]]\nname = "vault"\ntarget = "vault/fleet"\nplan = "1d=>1h"\n')
    fleet.cli("storage", "init", "--zfs", "tank/fleet")
    fleet.cli("release", "add", str(release_zip()))
    with daemon(fleet, "fleet-zfs"):
        fleet.cli("instance", "create", "alice", "--release", "12.331", "--owner", OWNER)
        alice = fleet.wait_state("alice", "running")
        install, data_ds = "tank/fleet/instances/alice/install", "tank/fleet/instances/alice/data"
        assert zfs("get", "-H", "-o", "value", "origin", install) == "tank/fleet/releases/12.331@pristine"
        assert int(zfs("get", "-H", "-p", "-o", "value", "used", install)) < MIB, "an install should cost nothing"
        assert int(zfs("get", "-H", "-p", "-o", "value", "quota", data_ds)) == 64 * MIB

        # The limit holds inside the instance: a tenant cannot write past it.
        filled = in_instance(alice, "head -c 8388608 /dev/urandom > r.bin; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do "
                                    "cat r.bin >> big.bin || { echo refused; break; }; done; rm -f r.bin big.bin")
        assert "refused" in filled["stdout"] and "quota exceeded" in filled["stderr"].lower(), filled
        # ZFS frees what `rm` let go in a later transaction group: until then the quota is still full (a
        # run that wrote here at once was refused with EDQUOT).
        wait_until(lambda: int(zfs("get", "-H", "-p", "-o", "value", "used", data_ds)) < 32 * MIB, 60,
                   "the space the tenant freed")

        # The first snapshot (due at once for a new instance) goes to the vault in full.
        wait_until(lambda: "vault: (full)" in fleet.cli("events", "--instance", "alice").stdout, 300, "the full send to the vault")

        data = Path(alice["data_dir"])
        world = data / "Data" / "worlds" / "w" / "world.db"
        world.parent.mkdir(parents=True, exist_ok=True)
        world.write_text("session 1")
        os.chown(world, alice["uid"], alice["uid"])
        snap = fleet.json("backup", "now", "alice", "--label", "before")["name"]

        # OpenZFS shows the snapshot itself under .zfs/snapshot; the tenant's page reads it there, with
        # no read-only clone made for it (that is zfs-fuse's stand-in).
        mountpoint = Path(zfs("get", "-H", "-o", "value", "mountpoint", data_ds))
        assert (mountpoint / ".zfs" / "snapshot" / snap / "Data" / "worlds" / "w" / "world.db").read_text() == "session 1"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(fleet.root / "run" / "backups.sock")),
                          base_url="http://alice.localhost", timeout=60) as door:
            listing = door.get("/backups/", headers={"X-Fleet-User": OWNER, "Accept": "application/json"}).json()
            assert snap in [s["name"] for s in listing]
            got = door.get(f"/backups/{snap}/Data/worlds/w/world.db", headers={"X-Fleet-User": OWNER})
            assert got.status_code == 200 and got.text == "session 1", got.text
        assert "views" not in zfs("list", "-H", "-o", "name", "-r", "tank/fleet")

        # The new snapshot follows incrementally (send -I from the last one the vault has).
        wait_until(lambda: f"-> {snap}" in fleet.cli("events", "--instance", "alice").stdout, 300, f"{snap} to reach the vault")
        sent = [line for line in fleet.cli("events", "--instance", "alice").stdout.splitlines() if f"-> {snap}" in line]
        assert "(full)" not in sent[0], sent
        there = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", "vault/fleet/alice").split()
        assert f"vault/fleet/alice@{snap}" in there
        assert zfs("get", "-H", "-o", "value", "guid", f"vault/fleet/alice@{snap}") == \
            zfs("get", "-H", "-o", "value", "guid", f"{data_ds}@{snap}")

        world.write_text("session 2 went badly")
        out = fleet.cli("backup", "restore", "alice", snap, "--yes").stdout
        assert "kept as snapshot safety-" in out
        assert world.read_text() == "session 1"
        assert fleet.wait_state("alice", "running")
