# flake.nix's outputs given stand-in inputs (nixpkgs' lib and the stub packages): its package, and its
# NixOS module evaluated over the stubs.
#   nix-instantiate --eval --strict --json tests/nix/eval-flake.nix --argstr nixpkgsLib /path/to/nixpkgs/lib
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  pkgs = import ./stub-pkgs.nix { inherit lib; };
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs);
  };
  flake = (import ../../flake.nix).outputs {
    self = flake;
    inherit nixpkgs;
  };
  package = flake.packages.x86_64-linux.default;
  evaluated = lib.evalModules {
    modules = [
      flake.nixosModules.default
      ./stubs.nix
      {
        services.foundry-fleet.enable = true;
        services.foundry-fleet.domain = "games.example.org";
      }
    ];
  };
in
{
  inputs = builtins.attrNames (import ../../flake.nix).inputs;
  systems = builtins.attrNames flake.packages;
  package = {
    inherit (package) name;
    path = package.outPath;
    inherit (package.buildArgs)
      dependencies
      pythonRemoveDeps
      makeWrapperArgs
      pythonImportsCheck
      ;
    pyseccompPatch = package.buildArgs.passthru.pyseccomp.buildArgs.postPatch;
  };
  moduleExecStart = evaluated.config.systemd.services.foundry-fleet.serviceConfig.ExecStart;
  diskoLayoutIsAFunction = builtins.isFunction flake.lib.diskoLayout;
}
