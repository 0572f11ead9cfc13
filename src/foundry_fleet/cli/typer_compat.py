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


def with_usage(error: Exception, root: typer.Typer, argv: list[str]) -> None:
    """Give a usage error the context of the command it is about, so it is shown with that command's
    usage line. Click raises some (an option missing its value) before any context exists."""
    if getattr(error, "ctx", "absent") is not None:
        return
    command = typer.main.get_command(root)
    ctx = command.make_context("foundry-fleet", [], resilient_parsing=True)
    for word in argv:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            if not word.startswith("-") and getattr(command, "commands", None):
                break  # an unknown word where a command was expected
            continue
        command = sub
        ctx = command.make_context(word, [], parent=ctx, resilient_parsing=True)
    error.ctx = ctx  # type: ignore[attr-defined]


def _coerce_text_without_pydantic() -> None:
    """Since typer 0.29 every parameter's value goes through a pydantic TypeAdapter, built on first use:
    importing pydantic and building adapters costs about 0.1 s, half of what a command that only asks
    the daemon may take. A text parameter needs no conversion (click hands over a str), so text
    parameters are checked here and pydantic is imported only by commands with typed ones (numbers,
    paths). A flag is the same: click hands over a bool. Older typer releases, which convert with
    click, are left as they are."""
    try:
        from typer._coercion import RuntimeParam
        from typer.core import _TyperParameter
    except ImportError:
        return
    from typing import Any, Optional

    plain = {str: str, Optional[str]: str, bool: bool}  # annotation -> what click already hands over

    class PlainParam(RuntimeParam):  # type: ignore[misc]
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if isinstance(value, plain[self.annotation]):
                return value
            raise typer.BadParameter(f"Value {value!r} is not valid here.", ctx=ctx, param=param)

    build = _TyperParameter.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        d = self.type_descriptor
        if self._runtime_param is None and d.annotation in plain and d.file_annotation is None:
            self._runtime_param = PlainParam(annotation=d.annotation, parameter_info=d.parameter_info)
        return build(self)

    _TyperParameter.get_runtime_param = get_runtime_param


_coerce_text_without_pydantic()
