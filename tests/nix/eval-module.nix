# The NixOS module evaluated over the stubs: what the tests look at, as JSON.
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix \
#     --argstr nixpkgsLib /path/to/nixpkgs/lib --argstr modulesJSON '["'$PWD'/nix/example-host.nix"]'
# `modulesJSON`: more modules, as a JSON list of absolute paths; `settingsJSON`: one more module's
# config, as JSON (what a test varies).
{
  nixpkgsLib,
  modulesJSON ? "[]",
  settingsJSON ? "{}",
}:
let
  lib = import nixpkgsLib;
  evaluated = lib.evalModules {
    modules = [
      ../../nix/module.nix
      ./stubs.nix
      {
        _file = "the test's settings";
        config = builtins.fromJSON settingsJSON;
      }
    ]
    ++ map (path: /. + path) (builtins.fromJSON modulesJSON);
  };
  config = evaluated.config;
  fleet = config.services.foundry-fleet;
in
{
  service = config.systemd.services.foundry-fleet or null;
  fleetToml = if fleet.enable then builtins.fromJSON fleet.configFile.json else null;
  configFile = if fleet.enable then "${fleet.configFile}" else null;
  firewall = config.networking.firewall;
  etc = lib.mapAttrs (_: e: "${e.source}") config.environment.etc;
  variables = config.environment.variables;
  systemPackages = map toString config.environment.systemPackages;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
}
