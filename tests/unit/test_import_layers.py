"""The house reads top-down: adapters -> services -> domain, drivers behind Protocols, and the wiring
above them all. Checked on the source's imports (also those inside functions), so a shortcut fails here
rather than in review."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import foundry_fleet

SRC = Path(foundry_fleet.__file__).parent

ADAPTERS = frozenset({"api", "web", "bot", "cli"})
DRIVERS = frozenset({"storage", "runtime", "edge", "releases", "store", "sftp"})
SERVICES = frozenset({"services"})
DOMAIN = frozenset({"domain"})
WIRING = frozenset({"wiring"})

# (importing module, imported module) pairs that break a rule today, each with why it is still there.
# Keep this list short and honest: an entry whose import has gone fails the test, so it is removed.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name of the file
    imported: str  # dotted module name it imports
    line: int


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, importer: str | None = None) -> list[Import]:
    importer = importer or _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(importer, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                package = importer.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from foundry_fleet.services import wizard` imports the module foundry_fleet.services.wizard
            found += [Import(importer, f"{module}.{alias.name}", node.lineno) for alias in node.names
                      if (SRC / Path(*module.split(".")[1:]) / f"{alias.name}.py").is_file()
                      or (SRC / Path(*module.split(".")[1:]) / alias.name).is_dir()]
            found.append(Import(importer, module, node.lineno))
    return [i for i in found if i.imported == "foundry_fleet" or i.imported.startswith("foundry_fleet.")]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _all_imports() -> list[Import]:
    return [i for path in sorted(SRC.rglob("*.py")) for i in _imports(path)]


def _forbidden(imp: Import) -> str | None:
    """Why this import breaks the layering, or None."""
    src, dst = _layer(imp.importer), _layer(imp.imported)
    if src is None or dst is None or src == dst:
        return None
    if src in DOMAIN:
        return "domain/ is pure: it imports nothing of the fleet but domain/"
    if src in SERVICES and dst in ADAPTERS | WIRING:
        return "services/ imports no adapter and not the wiring (which builds the services)"
    if src in ADAPTERS and dst in DRIVERS:
        return "adapters call services, never a driver directly"
    if src in DRIVERS and dst in SERVICES | ADAPTERS | WIRING:
        return "drivers sit behind Protocols: they import no service, adapter or wiring"
    return None


def test_every_layer_imports_only_downwards() -> None:
    broken = []
    for imp in _all_imports():
        why = _forbidden(imp)
        if why and (imp.importer, imp.imported) not in KNOWN_EXCEPTIONS:
            broken.append(f"{imp.importer}:{imp.line} imports {imp.imported}: {why}")
    assert not broken, "\n".join(broken)


def test_every_known_exception_is_still_needed() -> None:
    seen = {(i.importer, i.imported) for i in _all_imports() if _forbidden(i)}
    stale = [f"{a} -> {b}" for a, b in KNOWN_EXCEPTIONS if (a, b) not in seen]
    assert not stale, "these imports are gone: remove them from KNOWN_EXCEPTIONS\n" + "\n".join(stale)


def test_the_walker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rules catch what they are for: a lazy import inside a function counts too."""
    fake = Import("foundry_fleet.services.x", "foundry_fleet.web.app", 1)
    assert _forbidden(fake)
    assert _forbidden(Import("foundry_fleet.cli.x", "foundry_fleet.storage.zfs", 1))
    assert _forbidden(Import("foundry_fleet.edge.x", "foundry_fleet.services.hostnames", 1))
    assert _forbidden(Import("foundry_fleet.domain.x", "foundry_fleet.config", 1))
    assert _forbidden(Import("foundry_fleet.wiring.daemon", "foundry_fleet.web.app", 1)) is None
    assert _forbidden(Import("foundry_fleet.services.x", "foundry_fleet.storage.base", 1)) is None
    module = tmp_path / "x.py"
    module.write_text("def f():\n    from foundry_fleet.web.app import by_socket\n"
                      "    from ..bot import runner\n")
    found = {(i.imported, i.line) for i in _imports(module, "foundry_fleet.services.x")}
    assert ("foundry_fleet.web.app", 2) in found
    assert ("foundry_fleet.bot.runner", 3) in found
