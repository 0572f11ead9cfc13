# disko layout of a disk given to the fleet: one GPT partition holding a ZFS pool, and in it the
# datasets foundry-fleet's ZFS driver adopts as they are (src/foundry_fleet/storage/zfs_layout.py):
#
#   <pool>/<dataset>             the fleet root, mounted at <root> (state, logs, release cache, ...);
#                                it is also the fleet's zfs_base
#   <pool>/<dataset>/shared      <root>/shared, the assets every instance sees read-only
#   <pool>/<dataset>/releases    not mounted (mountpoint=none, canmount=off): one clone source per release
#   <pool>/<dataset>/instances   not mounted (mountpoint=none, canmount=off): each instance's datasets
#
# The driver makes the rest (per-release and per-instance datasets) itself, each with an explicit
# mountpoint under <root>. Use with the NixOS module's
#   services.foundry-fleet.storage = { driver = "zfs"; zfsBase = "<pool>/<dataset>"; };
#
# A function of the disk's device path:
#   disko --mode destroy,format,mount nix/disko.nix --argstr device /dev/disk/by-id/nvme-...
# or in a NixOS configuration (with disko's module imported):
#   imports = [ (import ./nix/disko.nix { device = "/dev/disk/by-id/nvme-..."; }) ];
{
  device ? throw "nix/disko.nix needs the disk's device path: device = \"/dev/disk/by-id/...\"",
  pool ? "fleet",
  dataset ? "foundry",
  root ? "/var/lib/foundry-fleet",
  ...
}:
{
  disko.devices = {
    disk.foundry-fleet = {
      type = "disk";
      inherit device;
      content = {
        type = "gpt";
        partitions.zfs = {
          size = "100%";
          content = {
            type = "zfs";
            inherit pool;
          };
        };
      };
    };

    zpool.${pool} = {
      type = "zpool";
      options.ashift = "12";
      rootFsOptions = {
        # The pool's own dataset holds nothing: only the fleet's tree below it is mounted.
        canmount = "off";
        compression = "lz4";
        atime = "off";
        # The fleet takes, thins and ships its own snapshots (and counts them against each tenant's
        # quota): other snapshot tools keep off.
        "com.sun:auto-snapshot" = "false";
      };
      datasets = {
        ${dataset} = {
          type = "zfs_fs";
          mountpoint = root;
          # A missing data disk leaves the host booting; the service waits for this mount.
          mountOptions = [
            "defaults"
            "nofail"
          ];
        };
        "${dataset}/shared" = {
          type = "zfs_fs";
          mountpoint = "${root}/shared";
          mountOptions = [
            "defaults"
            "nofail"
          ];
        };
        "${dataset}/releases" = {
          type = "zfs_fs";
          options = {
            mountpoint = "none";
            canmount = "off";
          };
        };
        "${dataset}/instances" = {
          type = "zfs_fs";
          options = {
            mountpoint = "none";
            canmount = "off";
          };
        };
      };
    };
  };
}
