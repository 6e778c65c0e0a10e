"""The example photos that ship with the package: a few people and garments, each with its
licence, described by ``examples.json`` (see ``examples/README.md`` in the repository).

They are package data, so an installed wheel has them: the web UI lists them, and the README's
first command runs on them with ``--model tiny``. A garment records its ``--category`` and a
description; a person may come with a mask and a DensePose picture for the tiny model (the real
model computes both from the photo).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EXAMPLES_DIR", "ExampleGarment", "ExamplePerson", "example_garments", "example_people"]

#: The folder holding the example files.
EXAMPLES_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ExamplePerson:
    """A person photo; ``mask`` and ``pose``: an upper-body (or, for the dress figure, dress)
    mask and a DensePose-style picture made for it, when it has them."""

    path: Path
    title: str
    licence: str
    mask: Path | None = None
    pose: Path | None = None


@dataclass(frozen=True)
class ExampleGarment:
    """A garment photo with its ``--category`` and a description of it."""

    path: Path
    category: str
    description: str
    licence: str


def _metadata() -> dict:
    return json.loads((EXAMPLES_DIR / "examples.json").read_text(encoding="utf-8"))


def _path(name: str | None) -> Path | None:
    return None if name is None else EXAMPLES_DIR / name


def example_people() -> list[ExamplePerson]:
    """The example people, in the order the UI shows them."""
    return [
        ExamplePerson(
            _path(p["file"]), p["title"], p["licence"], _path(p.get("mask")), _path(p.get("pose"))
        )
        for p in _metadata()["people"]
    ]


def example_garments() -> list[ExampleGarment]:
    """The example garments, in the order the UI shows them."""
    return [
        ExampleGarment(_path(g["file"]), g["category"], g["description"], g["licence"])
        for g in _metadata()["garments"]
    ]
