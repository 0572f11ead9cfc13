"""One way for every destructive command to ask first.

Answering no exits 1 with "nothing changed": the command did not do what it was asked to, so a
script that chains it must not go on as if it had, and nothing is left half done to look at.
Without a terminal nobody can answer, so the command refuses rather than guess: scripts pass --yes.
"""

from __future__ import annotations

import sys

import typer

from foundry_fleet.cli.render import err_console
from foundry_fleet.domain.errors import InvalidInput


def confirm_or_refuse(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput(f"{question} (no terminal to ask on)", "pass --yes to go ahead without asking")
    if not typer.confirm(question, default=False):
        err_console.print("nothing changed", highlight=False)
        raise typer.Exit(1)
