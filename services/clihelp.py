"""The ``--help`` both command lines print (``sjft-retrieval``, ``sjft-train`` and their ``python -m`` forms).

Every option states its default: argparse's own ``ArgumentDefaultsHelpFormatter`` also prints
``(default: None)`` for options whose absence means something else (a setting read elsewhere, a value
derived from other flags), and ``(default: False)`` on switches; there the option's help says in words what
happens without it, and this formatter adds ``(default: X)`` only where X is the real value.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """``(default: X)`` after the help of every option that takes a value and has a concrete default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        says_default = "default" in text.lower()
        if (
            says_default
            or action.required
            or action.nargs == 0  # a switch: off unless given
            or action.default in (None, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return action.help
        return f"{text} (default: %(default)s)"
