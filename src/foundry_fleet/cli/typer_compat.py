"""How the CLI builds its command groups and recognises a usage error, whatever typer release is installed.

- Help texts are plain text: they name things like `POOL[/PATH]` and `[limits] disk_mb`, which rich
  markup (typer's default when rich is installed) would read as tags and fail on. So markup is off.
- Since typer 0.29, typer carries its own copy of click (`typer._click`), so `click.ClickException`
  from the click package is no longer what typer raises for a usage error. The class is taken from
  typer's own exceptions instead, which works with the copy and with the click package alike.
"""

from __future__ import annotations

import typer


def command_group(help_text: str) -> typer.Typer:
    """A group of subcommands (`foundry-fleet instance ...`); without a subcommand it shows its help."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)


def _click_exception() -> type[Exception]:
    # typer.BadParameter is click's BadParameter (typer's copy, or the package's in older releases).
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


ClickException = _click_exception()
