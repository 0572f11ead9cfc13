# Stand-ins for the packages the module and the package expression name: attribute sets with a store
# path, enough for string interpolation and `types.package`. Nothing is built or fetched.
{ lib }:
let
  drv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  # pkgs.formats.toml: the same value type as nixpkgs' JSON-like formats; `generate` keeps the value as
  # JSON beside the store path, for the tests to read what fleet.toml would hold.
  tomlValue =
    let
      valueType =
        lib.types.nullOr (
          lib.types.oneOf [
            lib.types.bool
            lib.types.int
            lib.types.float
            lib.types.str
            lib.types.path
            (lib.types.attrsOf valueType)
            (lib.types.listOf valueType)
          ]
        )
        // {
          description = "TOML value";
        };
    in
    valueType;

  # buildPythonApplication and friends return their arguments (less the source, which would be
  # copied into a store) beside a store path, for the tests to read.
  built =
    args:
    drv "${args.pname}-${args.version}"
    // {
      buildArgs = removeAttrs args [ "src" ];
    };

  pythonNames = [
    "typer"
    "rich"
    "pydantic"
    "sqlalchemy"
    "alembic"
    "httpx"
    "starlette"
    "uvicorn"
    "filelock"
    "discordpy"
    "authlib"
    "itsdangerous"
    "idna"
    "jinja2"
    "prometheus-client"
    "asyncssh"
    "setuptools"
    "wheel"
  ];

  pkgs =
    lib.genAttrs [
      "caddy"
      "nodejs"
      "bubblewrap"
      "slirp4netns"
      "iptables"
      "util-linux"
      "procps"
      "restic"
      "openssh"
      "podman"
      "conmon"
      "catatonit"
      "zfs"
      "libseccomp"
    ] drv
    // {
      inherit lib;
      formats.toml =
        { }:
        {
          type = tomlValue;
          generate =
            name: value:
            drv name
            // {
              json = builtins.toJSON value;
            };
        };
      python3Packages = lib.genAttrs pythonNames drv // {
        buildPythonApplication = built;
        buildPythonPackage = built;
        fetchPypi = args: drv "${args.pname}-${args.version}.tar.gz" // { fetchArgs = args; };
      };
      callPackage = lib.callPackageWith pkgs;
      stdenv.hostPlatform.system = "x86_64-linux";
      foundry-fleet = drv "foundry-fleet-0.1.0";
    };
in
pkgs
