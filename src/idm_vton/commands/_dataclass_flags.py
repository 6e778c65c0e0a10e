"""Command-line flags generated from config dataclasses, so each option is written once.

A config field (see :func:`idm_vton.options.option`) becomes one flag:

* the flag is ``--<name with dashes>``; a ``bool`` field that is false by default becomes a
  ``store_true`` switch, one that is true by default a ``--no-<name>`` switch;
* ``int``, ``float``, ``str`` and ``Path`` fields (optionally ``| None``) are parsed as such
  (integers within +-2**31 - 1, numbers finite: NaN and infinities are refused);
  ``tuple[int, int]`` takes two values; an enum field lists its values as choices;
* the field's ``help``, ``group``, ``metavar``, ``required`` and ``positional`` metadata go to
  argparse, a ``parse`` function replaces the type's parser, and ``shared`` takes the help and
  parsing of a flag defined once for several commands (:mod:`._flags`).

:func:`config_from_args` builds the dataclass back from the parsed namespace.

Why not ``transformers.HfArgumentParser`` or ``tyro``: the first imports transformers before
``--help`` can print and has no flags shared between commands; the second writes its own
multi-line errors (the command line's rule is one line, :class:`~.main.OneLineParser`) and would
be a new dependency. This layer is small and does exactly the command line's conventions. The memory-mode
flags (:class:`~idm_vton.pipelines.memory.MemoryOptions`) are such a set, shared by ``tryon`` and
``serve``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from . import _flags

__all__ = [
    "add_dataclass_arguments",
    "add_memory_arguments",
    "apply_memory_options",
    "config_from_args",
    "flag_fields",
    "memory_options",
]


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` that have a command-line flag: those made with ``option()``
    (whose metadata has a ``help`` entry), unless ``flag=None``."""
    return [
        f
        for f in dataclasses.fields(cls)
        if "help" in f.metadata and f.metadata.get("flag", "") is not None
    ]


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls,
    *,
    exclude: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
) -> argparse.ArgumentParser:
    """Add one flag per field of the dataclass ``cls`` (see the module docstring).

    ``exclude`` names fields the command sets itself; ``defaults`` and ``helps`` override a
    field's default or help for this command only.
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {g.title: g for g in getattr(parser, "_action_groups", [])}
    for f in flag_fields(cls):
        if f.name in exclude:
            continue
        meta = f.metadata
        title = meta.get("group")
        if title and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = groups[title] if title else parser
        flags, kwargs = _argument(f, hints[f.name], (defaults or {}).get(f.name, _default(f)))
        if helps and f.name in helps:
            kwargs["help"] = helps[f.name]
        target.add_argument(*flags, **kwargs)
    return parser


def config_from_args(cls, args: argparse.Namespace, **values: Any):
    """``cls(...)`` from the parsed flags of its fields, plus ``values`` for the others."""
    for f in flag_fields(cls):
        if f.name not in values and hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return cls(**values)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _argument(f: dataclasses.Field, hint: Any, default: Any) -> tuple[list[str], dict]:
    """(flag strings, ``add_argument`` keywords) of one field."""
    meta = f.metadata
    shared = _flags.SHARED[meta["shared"]] if meta.get("shared") else {}
    if default is dataclasses.MISSING and "default" in shared:
        default = shared["default"]
    kind = _unwrap(hint)
    kwargs: dict[str, Any] = {"help": meta.get("help") or shared.get("help") or None}
    name = f.name.replace("_", "-")
    if kind is bool:
        assert default is not dataclasses.MISSING, f.name
        flag = meta.get("flag") or (f"--no-{name}" if default else f"--{name}")
        kwargs.update(action="store_false" if default else "store_true", dest=f.name)
        return [flag], kwargs
    parse = meta.get("parse") or shared.get("parse")
    if parse is not None:
        kwargs["type"] = _flags.argparse_type(parse)
    elif isinstance(kind, type) and issubclass(kind, Enum):
        kwargs["type"] = _flags.argparse_type(getattr(kind, "parse", kind))
        kwargs["choices"] = list(kind)
        kwargs["metavar"] = "{" + ",".join(m.value for m in kind) + "}"
    elif typing.get_origin(kind) is tuple:
        item_types = typing.get_args(kind)
        assert len(set(item_types)) == 1 and Ellipsis not in item_types, (f.name, kind)
        parse = {int: _flags.parse_int, float: _flags.parse_float}.get(item_types[0])
        item_type = item_types[0] if parse is None else _flags.argparse_type(parse)
        kwargs.update(type=item_type, nargs=len(item_types))
    elif kind is int:
        kwargs["type"] = _flags.argparse_type(_flags.parse_int)
    elif kind is float:
        kwargs["type"] = _flags.argparse_type(_flags.parse_float)
    elif kind is Path:
        kwargs["type"] = kind
    else:
        assert kind is str or kind is Any, (f.name, kind)
    for key in ("metavar", "choices"):
        if meta.get(key) or shared.get(key):
            kwargs[key] = meta.get(key) or shared[key]
    if meta.get("positional"):
        kwargs.pop("dest", None)
        if default is not dataclasses.MISSING:
            kwargs.update(nargs="?", default=default)
        return [f.name], kwargs
    flag = meta.get("flag") or f"--{name}"
    kwargs["dest"] = f.name
    if default is dataclasses.MISSING or meta.get("required"):
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    return [flag], kwargs


def _unwrap(hint: Any) -> Any:
    """``X`` of ``X`` or ``X | None`` (an optional field simply defaults to ``None``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        assert len(args) == 1, hint
        return args[0]
    return hint


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """The memory-mode flags (:class:`~idm_vton.pipelines.memory.MemoryOptions`), in a group;
    ``--offload`` only if the parser does not have it yet."""
    from ..pipelines.memory import MemoryOptions

    exclude = ("offload",) if "--offload" in parser._option_string_actions else ()
    add_dataclass_arguments(parser, MemoryOptions, exclude=exclude)


def memory_options(args: argparse.Namespace):
    """The :class:`~idm_vton.pipelines.memory.MemoryOptions` the parsed flags ask for."""
    from ..pipelines.memory import MemoryOptions

    return config_from_args(MemoryOptions, args)


def apply_memory_options(pipe, args: argparse.Namespace, device=None):
    """Apply the parsed memory flags to ``pipe`` (see :func:`~idm_vton.pipelines.memory.apply_memory_options`)."""
    from ..pipelines.memory import apply_memory_options as apply

    return apply(pipe, memory_options(args), device)
