"""Tenant text made safe to show an admin: every non-printing character shown as an escape.

A tenant's server writes whatever it likes to its log, and its errors end up in state reasons and
events. Shown raw in a terminal, ESC and the C1 controls are commands: OSC 0 retitles the window,
OSC 52 writes the clipboard, CSI moves the cursor and erases, and a bare carriage return overwrites
what was printed before it. Bidirectional overrides and zero-width characters make text read other
than it is. So every character Python does not call printable (`str.isprintable`: the categories
Cc, Cf, Cs, Co, Cn, Zl, Zp and the spaces other than U+0020) is shown the way `repr` shows it
(`\\x1b`, `\\u202e`, `\\U000e0001`), except a tab, and a newline where the text may span lines.

Printable text comes back unchanged, backslashes included: the point is that nothing reaches the
terminal as a command, not that the output can be decoded back.
"""

from __future__ import annotations

import re


def _escaped(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_controls(text: str, *, multiline: bool = False) -> str:
    """`text` with every non-printing character but tab (and newline when `multiline`) escaped."""
    if text.isprintable():
        return text  # the common case, checked at C speed
    keep = "\t\n" if multiline else "\t"
    return "".join(ch if ch.isprintable() or ch in keep else _escaped(ch) for ch in text)


def plain_from_discord(text: str) -> str:
    """Discord's markdown read as plain text, for a console or a log: bold and code marks dropped, a
    mention `<@id>` shown as `@id` (a console cannot resolve it to a name)."""
    text = re.sub(r"<@!?(\d+)>", r"@\1", text)
    text = re.sub(r"```[a-z]*\n?", "", text)
    for mark in ("**", "__", "`"):
        text = text.replace(mark, "")
    return text
