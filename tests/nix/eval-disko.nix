# nix/disko.nix evaluated by disko's own types: the whole `_create` script, each dataset's part of it,
# and the NixOS configuration (fileSystems) disko derives from the layout.
#   nix-instantiate --eval --strict --json tests/nix/eval-disko.nix \
#     --argstr nixpkgsLib /path/to/nixpkgs/lib --argstr diskoLib /path/to/disko/lib --argstr device /dev/sdx
{
  nixpkgsLib,
  diskoLib,
  device,
  pool ? "fleet",
  dataset ? "foundry",
  root ? "/var/lib/foundry-fleet",
}:
let
  lib = import nixpkgsLib;
  disko = import diskoLib {
    inherit lib;
    makeTest = null;
    eval-config = null;
    qemu-common = null;
  };
  evaluated = lib.evalModules {
    modules = [
      { options.disko.devices = lib.mkOption { type = disko.toplevel; }; }
      (import ../../nix/disko.nix { inherit device pool dataset root; })
    ];
  };
  devices = evaluated.config.disko.devices;
  # "__root" is disko's stand-in for the pool's own dataset, made by `zpool create`.
  datasets = removeAttrs devices.zpool.${pool}.datasets [ "__root" ];
in
{
  create = devices._create;
  datasets = lib.mapAttrsToList (_: d: {
    name = d._name;
    create = d._create;
    inherit (d) mountpoint options;
  }) datasets;
  # What disko adds to the NixOS configuration, merged as NixOS would merge it.
  fileSystems =
    (lib.evalModules {
      modules = [
        {
          options.fileSystems = lib.mkOption {
            type = lib.types.attrsOf (
              lib.types.submodule {
                options = {
                  device = lib.mkOption { type = lib.types.str; };
                  fsType = lib.mkOption { type = lib.types.str; };
                  options = lib.mkOption { type = lib.types.listOf lib.types.str; };
                };
              }
            );
          };
        }
      ]
      ++ lib.flatten devices._config;
    }).config.fileSystems;
}
