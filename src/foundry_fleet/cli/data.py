"""`foundry-fleet instance import|export`: a tenant's worlds, modules and assets in and out of an instance."""

from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Annotated, Any, Optional

import typer

from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, err_console, human_bytes, print_json
from foundry_fleet.domain.errors import InvalidInput


def import_data(
    ctx: typer.Context,
    name: str,
    source: Annotated[str, typer.Argument(help="a zip, a folder (sent as a zip of its files), or an https link "
                                                "the daemon downloads (a timed link from another host)")],
    into: Annotated[str, typer.Option(help="where under the instance's data, e.g. Data/worlds")] = "Data",
    replace: Annotated[bool, typer.Option(help="overwrite files that exist (a snapshot is taken first)")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Bring worlds, modules or assets into an instance: checked like a release zip, no overwrite without
    --replace, a snapshot first, files owned by the instance (needs the daemon)."""
    c: CliContext = ctx.obj
    if "://" in source:  # the daemon downloads it, by the rules of release downloads (https, allowed hosts)
        result = c.require_daemon().import_data(name, None, into, replace, url=source)
    else:
        result = _send(c, name, Path(source), into, replace)
    if json_out:
        print_json(result)
        return
    console.print(f"imported {result['files']} file(s) ({human_bytes(result['bytes'])}) into {name}:{result['into']}"
                  f", {result['replaced']} replaced; the data before is snapshot {result['snapshot']}"
                  + ("; it was stopped meanwhile and is started again" if result["restarted"] else ""),
                  highlight=False)


def _send(c: CliContext, name: str, source: Path, into: str, replace: bool) -> dict[str, Any]:
    with ExitStack() as stack:
        if source.is_dir():
            f = stack.enter_context(tempfile.TemporaryFile())
            skipped = _zip_folder(source, f)
            if skipped:
                err_console.print(f"left out {skipped} link(s) and special file(s) of {source}", highlight=False)
        else:
            try:
                f = stack.enter_context(open(source, "rb"))
            except OSError as e:
                raise InvalidInput(f"cannot read {source}: {e.strerror}", "give a zip file or a folder") from None
        return c.require_daemon().import_data(name, f, into, replace)


def _zip_folder(folder: Path, out: IO[bytes]) -> int:
    """Zip the regular files and folders under `folder` into `out`; returns how many entries were left out."""
    skipped = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for current, dirs, files in os.walk(folder, followlinks=False):
            rel = Path(current).relative_to(folder)
            for d in list(dirs):
                if os.path.islink(os.path.join(current, d)):
                    dirs.remove(d)
                    skipped += 1
            if rel != Path(".") and not files and not dirs:
                zf.write(current, f"{rel.as_posix()}/")
            for fname in files:
                path = os.path.join(current, fname)
                if os.path.islink(path) or not os.path.isfile(path):
                    skipped += 1
                    continue
                zf.write(path, (rel / fname).as_posix())
    out.seek(0)
    return skipped


def export_data(
    ctx: typer.Context,
    name: str,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="the zip to write (else stdout)")] = None,
) -> None:
    """A zip of an instance's Data and Config (without its licence and admin password), from a snapshot taken
    for it and removed once the zip is sent (needs the daemon)."""
    c: CliContext = ctx.obj
    if output is None and sys.stdout.isatty():
        raise InvalidInput("refusing to write a zip to the terminal", "give -o FILE, or redirect the output")
    client = c.require_daemon()
    if output is None:
        client.export_data(name, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    part = output.with_name(f".{output.name}.part")
    try:
        with open(part, "wb") as f:
            client.export_data(name, f)
        os.replace(part, output)  # a zip cut short by a failure is never left under the asked name
    finally:
        part.unlink(missing_ok=True)
    err_console.print(f"exported {name} to {output} ({human_bytes(output.stat().st_size)})", highlight=False)
