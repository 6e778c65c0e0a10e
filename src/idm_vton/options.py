"""Config dataclass fields that describe their own command-line option.

Each command's flags are built from its config dataclass by the command layer (``idm-vton``):
an option is written once, as a field with its default and help. These are plain
``dataclasses.field`` metadata; the library itself parses no command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, field
from typing import Any

from .errors import IdmVtonError, UsageError

__all__ = ["MAX_SEED", "check_seed", "option", "parse_seed"]

#: The largest random seed: seeds are 0 .. 2**32 - 1 everywhere (the command line, the server,
#: datasets' per-sample seeds), the range every generator in use (torch, numpy, Python) takes.
MAX_SEED = 2**32 - 1


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None | Any = MISSING,
    group: str | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    choices: list[str] | None = None,
    required: bool = False,
    positional: bool = False,
    shared: str | None = None,
) -> Any:
    """A dataclass field with the description of its command-line option.

    Args:
        default, default_factory: as for ``dataclasses.field``.
        help: the option's help text (``%(default)s`` is filled in).
        flag: the flag, default ``--<name with dashes>`` (``--no-<name>`` for a field that is
            true by default); ``None``: the field has no flag.
        group: title of the help section the flag is listed in.
        parse: turns the command-line string into the field's value (raises ``ValueError``).
        metavar, choices, required, positional: as for ``ArgumentParser.add_argument``.
        shared: the name of a flag defined once for several commands (its help and parsing
            are taken from the command layer's shared flag of that name).
    """
    metadata = {
        "help": help,
        "group": group,
        "parse": parse,
        "metavar": metavar,
        "choices": choices,
        "required": required,
        "positional": positional,
        "shared": shared,
    }
    if flag is not MISSING:
        metadata["flag"] = flag
    return field(default=default, default_factory=default_factory, metadata=metadata)


def check_seed(seed: object, flag: str = "--seed", error: type[IdmVtonError] = UsageError) -> int:
    """``seed`` if it is an integer from 0 to :data:`MAX_SEED`; otherwise ``error`` in one line."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise error(f"{flag} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def parse_seed(text: str) -> int:
    """A seed from the command line (raises ``ValueError`` for argparse's one-line error)."""
    try:
        seed = int(text)
    except ValueError:
        raise ValueError(f"invalid seed {text!r}: expected an integer") from None
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"a seed must be from 0 to {MAX_SEED}, got {seed}")
    return seed
