"""Asking before a step that is hard to take back, and refusing to guess when nobody can answer."""

from __future__ import annotations

import sys

import typer

from foundry_fleet.domain.errors import InvalidInput


def confirm(question: str, yes: bool) -> None:
    """Go on when `yes`, or when the person at the terminal says so; abort when they say no. Without a
    terminal (a script, cron) nobody can answer: refuse rather than take the step unasked."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput(f"{question} (not asked: no terminal)", "pass --yes")
    typer.confirm(question, abort=True)
