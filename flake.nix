{
  description = "foundry-fleet: host Foundry Virtual Tabletop for many game masters on one server";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        foundry-fleet = pkgs.callPackage ./nix/package.nix { };
        default = foundry-fleet;
      });

      # services.foundry-fleet, with this flake's build as its package.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.foundry-fleet.package =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      # The disk layout for disko, a function of the disk: `foundry-fleet.lib.diskoLayout { device = "/dev/..."; }`.
      lib.diskoLayout = import ./nix/disko.nix;
    };
}
