"""Garment attribute tags: the label sets they are drawn from and the datasets' tags per garment.

The garment description V of the paper (Sec. 3.2, "detailed captions") is the output of an image
annotator: the garment's sleeve length, neckline and item, in this order. VITON-HD's tag files
carry that output per garment (``tag_info``: ``sleeveLength``, ``neckLine``, ``item`` and other
attributes); DressCode's ``dc_caption.txt`` carries the composed text.

* :class:`LabelSets`: the labels each attribute can take, kept as package data
  (``idm_vton/data/labels/{name}.json``): ``vitonhd`` (4 sleeve lengths, 14 necklines, 27 items,
  the vocabulary of VITON-HD's published test tags, derivable with
  :func:`vocabulary_from_tag_files`) and ``dresscode`` (the same plus DressCode's category names);
* :func:`load_vitonhd_attribute_tags` / :func:`parse_dresscode_caption`: each garment's label per
  attribute (``None`` where the dataset has none);
* :func:`list_tagged_garments`: the garments of a dataset split with their tags, what
  ``idm-vton train-annotator`` and ``evaluate-annotator`` read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..enums import DatasetKind, GarmentCategory, Split
from ..errors import DatasetError, UsageError
from .captions import VITONHD_TAG_ORDER, load_dresscode_captions, read_vitonhd_entries
from .pairs import read_pairs, vitonhd_tag_file_candidates

__all__ = [
    "ATTRIBUTES",
    "LABEL_SET_NAMES",
    "GarmentTagRecord",
    "LabelSets",
    "list_tagged_garments",
    "load_label_sets",
    "load_vitonhd_attribute_tags",
    "parse_dresscode_caption",
    "vocabulary_from_tag_files",
]

#: The attributes of V, in the order they are composed (sleeve length, neckline, item).
ATTRIBUTES: tuple[str, ...] = VITONHD_TAG_ORDER
#: The label sets shipped with the package, one per dataset layout.
LABEL_SET_NAMES: tuple[str, ...] = tuple(kind.value for kind in DatasetKind)

#: One garment's tags: attribute -> label, or None where the dataset has no (non-null) tag.
Tags = dict[str, str | None]


@dataclass(frozen=True)
class LabelSets:
    """The labels each attribute of V can take (the classes of an annotator).

    ``labels``: attribute -> labels, spelt as in the datasets' tag files; ``prompts``: attribute ->
    the zero-shot text template (``{label}`` is replaced by the label in lower case), with
    ``label_prompts`` overriding it for single labels; ``item_categories``: the garment category
    (the mask region) of the items that are not upper-body garments. Compare two label sets with
    ``==`` (the labels alone).
    """

    name: str
    labels: Mapping[str, tuple[str, ...]]
    prompts: Mapping[str, str] = field(default_factory=dict, compare=False)
    label_prompts: Mapping[str, Mapping[str, str]] = field(default_factory=dict, compare=False)
    item_categories: Mapping[str, GarmentCategory] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        assert tuple(self.labels) == ATTRIBUTES, tuple(self.labels)
        for attribute, labels in self.labels.items():
            assert labels and len(set(labels)) == len(labels), (attribute, labels)
        unknown = set(self.item_categories) - set(self.labels["item"])
        assert not unknown, unknown

    def category_of(self, item: str) -> GarmentCategory:
        """The garment category of an item label: the body region its automatic mask covers
        (upper body unless the label sets say otherwise)."""
        return self.item_categories.get(item, GarmentCategory.UPPER_BODY)

    def index(self, attribute: str, label: str) -> int | None:
        """The class index of ``label`` (exact spelling), or None if it is not in the set."""
        try:
            return self.labels[attribute].index(label)
        except ValueError:
            return None

    def lookup(self, attribute: str, text: str) -> str | None:
        """The label of ``attribute`` spelt ``text`` up to case and spacing, else None."""
        wanted = " ".join(text.split()).lower()
        return next((lab for lab in self.labels[attribute] if lab.lower() == wanted), None)

    def prompt(self, attribute: str, label: str) -> str:
        """The zero-shot text for ``label``."""
        special = self.label_prompts.get(attribute, {})
        if label in special:
            return special[label]
        return self.prompts.get(attribute, "{label}").format(label=label.lower())

    def to_json(self) -> dict[str, Any]:
        """``{"name": ..., "labels": {attribute: [labels]}}`` (what a probe file stores)."""
        return {"name": self.name, "labels": {a: list(ls) for a, ls in self.labels.items()}}


def load_label_sets(name: DatasetKind | str) -> LabelSets:
    """The label sets ``name`` (``vitonhd`` or ``dresscode``) shipped with the package."""
    name = DatasetKind.parse(name, "label set").value
    text = resources.files(__package__).joinpath("labels", f"{name}.json").read_text("utf-8")
    content = json.loads(text)
    attributes = content["attributes"]
    return LabelSets(
        name=content["name"],
        labels={a: tuple(attributes[a]["labels"]) for a in ATTRIBUTES},
        prompts={a: attributes[a]["prompt"] for a in ATTRIBUTES},
        label_prompts={a: dict(attributes[a].get("prompts", {})) for a in ATTRIBUTES},
        item_categories={
            item: GarmentCategory(category)
            for category, items in content.get("item_categories", {}).items()
            if category != "note"
            for item in items
        },
    )


# ------------------------------------------------------------------------------ VITON-HD tags
def _attribute_tags(entry: Mapping[str, Any]) -> Tags:
    """Per attribute, the first tag of that name with a non-null category (the rule of
    :func:`~idm_vton.data.captions.describe_vitonhd`), else None."""
    tags = entry.get("tag_info") or []
    found: Tags = dict.fromkeys(ATTRIBUTES)
    for attribute in ATTRIBUTES:
        for tag in tags:
            if tag.get("tag_name") == attribute and tag.get("tag_category") is not None:
                found[attribute] = tag["tag_category"]
                break
    return found


def load_vitonhd_attribute_tags(path: str | Path) -> dict[str, Tags]:
    """A ``vitonhd_{split}_tagged.json`` as ``{file_name: {attribute: label or None}}``.

    The file is checked as :func:`~idm_vton.data.captions.load_vitonhd_tags` checks it (one
    :class:`~idm_vton.errors.DatasetError` naming the file when it is not such a file).
    """
    return {entry["file_name"]: _attribute_tags(entry) for entry in read_vitonhd_entries(path)}


def vocabulary_from_tag_files(paths: Iterable[str | Path]) -> dict[str, tuple[str, ...]]:
    """Every label the tag files use per attribute, sorted (case-insensitively): how the
    ``vitonhd`` label sets were derived from the published test tags."""
    seen: dict[str, set[str]] = {a: set() for a in ATTRIBUTES}
    for path in paths:
        for tags in load_vitonhd_attribute_tags(path).values():
            for attribute, label in tags.items():
                if label is not None:
                    seen[attribute].add(label)
    return {a: tuple(sorted(labels, key=str.lower)) for a, labels in seen.items()}


# ------------------------------------------------------------------------------ DressCode tags
def parse_dresscode_caption(
    caption: str | None, label_sets: LabelSets, category: GarmentCategory
) -> Tags:
    """A DressCode caption read as ``[sleeve length] [neckline] item``.

    Labels are matched up to case and spacing, the longest first. Of the readings the caption
    allows (with or without each optional prefix), the first whose rest is an item label wins,
    so an item that starts with a neckline ("Halter Neck Dress") stays whole. Without such a
    reading (an item outside the label set, or no caption) the item is the garment's category
    name, the text DressCode gives a garment without a caption.
    """
    sleeve, neck, item = ATTRIBUTES
    words = tuple((caption or "").split())
    readings: list[tuple[Tags, tuple[str, ...]]] = []
    for sleeve_label, after_sleeve in _prefix_readings(label_sets, sleeve, words):
        for neck_label, rest in _prefix_readings(label_sets, neck, after_sleeve):
            readings.append(({sleeve: sleeve_label, neck: neck_label}, rest))
    for tags, rest in readings:
        label = label_sets.lookup(item, " ".join(rest)) if rest else None
        if label is not None:
            return {**tags, item: label}
    tags, _ = readings[0]  # the one that took every prefix it could
    return {**tags, item: label_sets.lookup(item, category.value)}


def _prefix_readings(
    label_sets: LabelSets, attribute: str, words: tuple[str, ...]
) -> list[tuple[str | None, tuple[str, ...]]]:
    """``(label, rest)`` for the longest label of ``attribute`` that ``words`` start with (if
    any), then ``(None, words)``."""
    sizes = sorted({len(label.split()) for label in label_sets.labels[attribute]}, reverse=True)
    for size in sizes:
        label = label_sets.lookup(attribute, " ".join(words[:size])) if len(words) >= size else None
        if label is not None:
            return [(label, words[size:]), (None, words)]
    return [(None, words)]


# ------------------------------------------------------------------------------ garments of a split
@dataclass(frozen=True)
class GarmentTagRecord:
    """One garment of a dataset split: its photo, its tags, and where it was listed."""

    path: Path
    tags: Tags
    category: GarmentCategory


def _pair_garments(pairs_file: Path, columns: tuple[int, ...]) -> list[str]:
    names: dict[str, None] = {}
    for pair in read_pairs(pairs_file):
        for column in columns:
            names[(pair.person, pair.garment)[column]] = None
    return list(names)


def list_tagged_garments(
    root: str | Path,
    dataset: DatasetKind | str,
    split: Split | str,
    category: GarmentCategory | str | None = None,
    label_sets: LabelSets | None = None,
) -> list[GarmentTagRecord]:
    """The garments of a split (each once, sorted by file name) with their dataset tags.

    VITON-HD: the garments the split's pairs file names (``{split}/cloth/<name>``: both columns,
    as every person's own garment is in ``cloth/`` under the person's name), tagged from
    ``vitonhd_{split}_tagged.json`` (required here). DressCode: per category (``category``, or all
    three), the garments of its pairs files (``train_pairs.txt``, or both test files), tagged by
    :func:`parse_dresscode_caption` from ``dc_caption.txt``.
    """
    root = Path(root)
    kind = DatasetKind.parse(dataset, "dataset")
    split = Split.parse(split, "split")
    if not root.is_dir():
        raise DatasetError(f"dataset root folder not found: {root}", path=root)
    if kind is DatasetKind.VITONHD:
        if category not in (None, "all", GarmentCategory.UPPER_BODY, "upper_body"):
            raise UsageError(f"VITON-HD has upper_body garments only, got category {category}")
        return _vitonhd_garments(root, split)
    categories = (
        list(GarmentCategory)
        if category in (None, "all")
        else [GarmentCategory.parse(category, "DressCode category")]
    )
    label_sets = label_sets or load_label_sets(DatasetKind.DRESSCODE)
    records = []
    for cat in categories:
        folder = root / cat.value
        caption_file = folder / "dc_caption.txt"
        captions = load_dresscode_captions(caption_file) if caption_file.is_file() else {}
        files = (
            ["train_pairs.txt"]
            if split is Split.TRAIN
            else [
                "test_pairs_paired.txt",
                "test_pairs_unpaired.txt",
            ]
        )
        names: dict[str, None] = {}
        for name in files:
            names.update(dict.fromkeys(_pair_garments(folder / name, (1,))))
        for name in sorted(names):
            caption = captions.get(name) or captions.get(Path(name).stem)
            tags = parse_dresscode_caption(caption, label_sets, cat)
            records.append(GarmentTagRecord(folder / "images" / name, tags, cat))
    return records


def _vitonhd_garments(root: Path, split: Split) -> list[GarmentTagRecord]:
    candidates = vitonhd_tag_file_candidates(root, split)
    tag_file = next((p for p in candidates if p.is_file()), None)
    if tag_file is None:
        raise DatasetError(
            f"VITON-HD tag file not found (looked at {', '.join(str(p) for p in candidates)}): "
            "the garments' tags are needed here",
            path=candidates[0],
        )
    tags = load_vitonhd_attribute_tags(tag_file)
    names = _pair_garments(root / f"{split.value}_pairs.txt", (0, 1))
    none: Tags = dict.fromkeys(ATTRIBUTES)
    cloth = root / split.value / "cloth"
    return [
        GarmentTagRecord(cloth / name, dict(tags.get(name, none)), GarmentCategory.UPPER_BODY)
        for name in sorted(names)
    ]
