# Small stand-ins for the NixOS options the module sets (systemd, networking.firewall, environment,
# assertions, boot.zfs), with the types NixOS gives them, and a stub `pkgs`: enough for
# `lib.evalModules` to type-check the module and hand back the unit and fleet.toml it makes.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  pkgs = import ./stub-pkgs.nix { inherit lib; };

  # As NixOS merges [Service] values: lists add up, single values must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    check = v: builtins.isString v || builtins.isBool v || builtins.isInt v || builtins.isList v;
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: builtins.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  units = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  service = {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = units;
      wants = units;
      requires = units;
      after = units;
      before = units;
      path = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf types.str;
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };

  ports = mkOption {
    type = types.listOf types.port;
    default = [ ];
  };
in
{
  options = {
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule service);
      default = { };
    };
    networking.firewall = {
      allowedTCPPorts = ports;
      allowedUDPPorts = ports;
    };
    networking.hostId = mkOption {
      type = types.nullOr (types.strMatching "[0-9a-f]{8}");
      default = null;
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule { options.source = mkOption { type = types.path; }; });
      default = { };
    };
    environment.variables = mkOption {
      type = types.attrsOf types.str;
      default = { };
    };
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    boot.supportedFilesystems = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    boot.zfs.package = mkOption {
      type = types.package;
      default = pkgs.zfs;
    };
  };

  config = {
    _module.args.pkgs = pkgs;
    # The flake's module gives the package (at mkDefault); below that, a stand-in.
    services.foundry-fleet.package = lib.mkOptionDefault pkgs.foundry-fleet;
  };
}
