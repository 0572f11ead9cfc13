"""`foundry-fleet instance sftp-key ...`: the public keys that may sign in over SFTP as an instance."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, print_json
from foundry_fleet.cli.typer_compat import command_group
from foundry_fleet.domain.errors import InvalidInput

app = command_group("Public keys for an instance's SFTP account (user name: the instance's name).")


def _keys(c: CliContext):  # type: ignore[no-untyped-def]
    from foundry_fleet.services.sftp_keys import MAX_KEY_TEXT, SftpKeys

    return SftpKeys(c.services().sessions, c.actor()), MAX_KEY_TEXT


@app.command()
def add(
    ctx: typer.Context,
    name: str,
    keyfile: Annotated[Path, typer.Argument(help="the public key's file, e.g. ~/.ssh/id_ed25519.pub; - reads stdin")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Let the holder of a key sign in over SFTP as the instance."""
    c: CliContext = ctx.obj
    keys, most = _keys(c)
    try:
        text = typer.get_text_stream("stdin").read(most + 1) if str(keyfile) == "-" else keyfile.read_text()[: most + 1]
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read {keyfile}: {e}", "give the .pub file of the key") from None
    key = keys.add(name, text)
    if json_out:
        print_json(key.to_dict())
        return
    console.print(f"key {key.id} ({key.key_type} {key.fingerprint}) may sign in over SFTP as {name}")


@app.command("list")
def list_(ctx: typer.Context, name: str, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The keys that may sign in as the instance."""
    c: CliContext = ctx.obj
    keys = _keys(c)[0].list(name)
    if json_out:
        print_json([k.to_dict() for k in keys])
        return
    t = Table()
    for col in ("id", "type", "fingerprint", "comment", "added", "by"):
        t.add_column(col)
    for k in keys:
        t.add_row(str(k.id), k.key_type, k.fingerprint, k.comment,
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(k.added_at)), k.added_by)
    console.print(t)


@app.command()
def remove(
    ctx: typer.Context,
    name: str,
    key: Annotated[str, typer.Argument(help="the key's id or fingerprint (see list)")],
) -> None:
    """Stop a key from signing in (sessions already open go on until they end)."""
    c: CliContext = ctx.obj
    gone = _keys(c)[0].remove(name, key)
    console.print(f"key {gone.id} ({gone.fingerprint}) removed from {name}")
