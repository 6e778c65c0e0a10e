"""The zero-shot annotator: a fashion image-text model scores one text prompt per label.

For each attribute, the garment photo's image embedding is compared with the text embedding of
every label's prompt (:meth:`~idm_vton.data.tags.LabelSets.prompt`, e.g. "a garment with a v
neck"); the softmax of the model's scaled similarities over the attribute's labels gives the
scores. No training data is needed, but the model is a separate download.

The default model is FashionCLIP 2.0 (``patrickjohncyh/fashion-clip``, MIT licence, a CLIP
ViT-B/32 fine-tuned on fashion products, Chia et al., Scientific Reports 2022), pinned to a
revision that has ``model.safetensors``: it loads with transformers' own ``CLIPModel`` (no
custom code, no key mapping). Any transformers ``CLIPModel`` or ``SiglipModel`` folder with
safetensors weights works too (``ZeroShotAnnotator.from_pretrained(folder)`` or
``$IDM_VTON_ZERO_SHOT_MODEL``). docs/annotator.md says why this default.

The model is fetched on first use into the Hugging Face cache with ``hf_hub_download``, like the
preprocessing weights (:mod:`idm_vton.loaders.hub`): huggingface_hub's progress bar, locking and
environment variables apply, the weight file is checked before it is loaded (and removed from
the cache when it is not a model), and without network the error is one line listing what is
missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.tags import ATTRIBUTES, LabelSets, load_label_sets
from ..errors import AnnotatorError, PreprocessModelError
from ..loaders.hub import (
    OFFLINE_HINT,
    cache_dir,
    cache_only_reason,
    first_line,
    is_disk_full,
    remove_from_cache,
)
from ..loaders.json_files import read_json_object
from ..loaders.weights import check_weight_file
from .annotator import GarmentAnnotator, GarmentImage, rgb_images
from .tags import DEFAULT_MIN_SCORE, GarmentTags

__all__ = [
    "DEFAULT_ZERO_SHOT_MODEL",
    "ZERO_SHOT_MODEL_ENV",
    "ZeroShotAnnotator",
    "ZeroShotModel",
    "fetch_zero_shot_model",
]

#: A folder holding a zero-shot model to use instead of the hub download.
ZERO_SHOT_MODEL_ENV = "IDM_VTON_ZERO_SHOT_MODEL"
_WEIGHTS = "model.safetensors"
# transformers classes by config ``model_type``: loaded with their own code, never remote code.
_MODEL_TYPES = ("clip", "siglip")


@dataclass(frozen=True)
class ZeroShotModel:
    """A hub model the zero-shot annotator can fetch: repository, pinned revision (a commit),
    the files it needs, and its licence (for the docs and messages)."""

    repo_id: str
    revision: str
    files: tuple[str, ...]
    licence: str

    @property
    def source(self) -> str:
        return f"the Hugging Face repository {self.repo_id} (revision {self.revision[:8]})"


#: FashionCLIP 2.0 at the commit that added ``model.safetensors`` (MIT licence).
DEFAULT_ZERO_SHOT_MODEL = ZeroShotModel(
    repo_id="patrickjohncyh/fashion-clip",
    revision="afacf5e5851d5979ab030e228eab60e2c95a912c",
    files=(
        "config.json",
        _WEIGHTS,
        "preprocessor_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    ),
    licence="MIT",
)


def fetch_zero_shot_model(
    model: ZeroShotModel = DEFAULT_ZERO_SHOT_MODEL, local_files_only: bool = False
) -> Path:
    """Download (or find in the hub cache) ``model``'s files; returns the snapshot folder.

    Raises :class:`~idm_vton.errors.AnnotatorError` in one line: files not cached and the hub
    out of reach (or ``HF_HUB_OFFLINE`` / ``local_files_only``), the disk full, the hub refusing a
    file, or a weight file that is not a model (deleted from the cache, so the next run downloads
    it again).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    paths: dict[str, Path] = {}
    missing: list[str] = []
    offline = cache_only_reason(local_files_only)
    cache_only = offline is not None
    for filename in model.files:
        try:
            path = hf_hub_download(
                model.repo_id, filename, revision=model.revision, local_files_only=cache_only
            )
        except LocalEntryNotFoundError:
            missing.append(filename)
            cache_only = True  # list the rest from the cache without waiting on the network
            continue
        except Exception as err:  # noqa: BLE001 - any other hub failure gets the same advice
            if is_disk_full(err):
                raise AnnotatorError(
                    f"no space left on the disk while downloading {filename} from {model.source} "
                    f"into the Hugging Face cache {cache_dir()}; free some space (or point "
                    "HF_HUB_CACHE at a larger disk) and run again"
                ) from err
            raise AnnotatorError(
                f"cannot download {filename} from {model.source} ({first_line(err)}); "
                f"{_OFFLINE_ADVICE}"
            ) from err
        paths[filename] = Path(path)
    if missing:
        why = offline or "the hub cannot be reached"
        raise AnnotatorError(
            f"the zero-shot annotator's model is not in the Hugging Face cache {cache_dir()} "
            f"and {why}: missing {', '.join(missing)} from {model.source}; {_OFFLINE_ADVICE}"
        )
    _checked_weights(paths[_WEIGHTS], model.source, from_cache=True)
    return paths[_WEIGHTS].parent


_OFFLINE_ADVICE = (
    f"run `idm-vton download` once with network access ({OFFLINE_HINT}), point $IDM_VTON_ZERO_SHOT_MODEL at a folder holding the model, "
    "or use the probe (--annotator probe or a probe file)"
)


def _checked_weights(path: Path, source: str, from_cache: bool) -> Path:
    """The weight file, or one line saying what is wrong with it (a cached one is deleted)."""
    try:
        check_weight_file(path, "zero-shot annotator", source, error=AnnotatorError)
        with path.open("rb") as stream:  # safetensors: an 8-byte header size, then JSON
            head = stream.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            raise AnnotatorError(
                f"zero-shot annotator weights at {path} are not a safetensors file (the file "
                f"starts with {head!r}); download {path.name} again from {source}"
            )
    except (AnnotatorError, PreprocessModelError) as err:
        if not from_cache:
            raise
        problem = remove_from_cache(path)
        if problem is None:
            raise AnnotatorError(
                f"{err}; it was deleted from the Hugging Face cache, the next run downloads it "
                "again"
            ) from None
        raise AnnotatorError(
            f"{err}; deleting it from the Hugging Face cache failed ({problem}): delete {path} "
            "and run again"
        ) from None
    return path


class ZeroShotAnnotator(GarmentAnnotator):
    """The zero-shot annotator (see the module docstring) on a loaded image-text model.

    Build it with :meth:`from_pretrained`. The prompts of every label are encoded once, here.
    """

    kind = "zero-shot"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        image_processor,
        label_sets: LabelSets,
        min_score: float = DEFAULT_MIN_SCORE,
        source: str = "",
    ) -> None:
        super().__init__(label_sets, min_score)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = source
        self._text = {a: self._encode_prompts(a) for a in ATTRIBUTES}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def identity(self) -> str:
        return f"zero-shot:{self.source}"

    @torch.no_grad()
    def _encode_prompts(self, attribute: str) -> torch.Tensor:
        prompts = [
            self.label_sets.prompt(attribute, lab) for lab in self.label_sets.labels[attribute]
        ]
        # SigLIP was trained on texts padded to its full length; CLIP reads up to the end token.
        padding = "max_length" if self.model.config.model_type == "siglip" else True
        tokens = self.tokenizer(prompts, padding=padding, truncation=True, return_tensors="pt")
        features = _features(self.model.get_text_features(**tokens.to(self.device)))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def describe_batch(self, images: Sequence[GarmentImage]) -> list[GarmentTags]:
        pixels = self.image_processor(images=rgb_images(images), return_tensors="pt").pixel_values
        dtype = next(self.model.parameters()).dtype
        features = _features(
            self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))
        )
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        scale = self.model.logit_scale.float().exp()
        return self._tags(
            {a: (scale * features @ text.T).softmax(dim=-1) for a, text in self._text.items()}
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | ZeroShotModel | None = None,
        *,
        label_sets: LabelSets | None = None,
        min_score: float = DEFAULT_MIN_SCORE,
        device=None,
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
    ) -> ZeroShotAnnotator:
        """The annotator on ``source``: a folder holding a transformers ``CLIPModel`` or
        ``SiglipModel`` (``model.safetensors``, config, tokenizer and preprocessor files), a
        :class:`ZeroShotModel` to fetch, or None: ``$IDM_VTON_ZERO_SHOT_MODEL`` if set, else
        :data:`DEFAULT_ZERO_SHOT_MODEL` (fetched on first use)."""
        label_sets = label_sets or load_label_sets("vitonhd")
        if source is None:
            source = os.environ.get(ZERO_SHOT_MODEL_ENV) or DEFAULT_ZERO_SHOT_MODEL
        if isinstance(source, ZeroShotModel):
            folder = fetch_zero_shot_model(source, local_files_only=local_files_only)
            name = f"{source.repo_id}@{source.revision[:8]}"
        else:
            folder = Path(source).expanduser()
            if not folder.is_dir():
                raise AnnotatorError(f"zero-shot model folder not found: {folder}")
            _checked_weights(folder / _WEIGHTS, f"the folder {folder}", from_cache=False)
            name = str(folder)
        model, tokenizer, processor = _load_model(folder, dtype)
        if device is not None:
            model.to(device)
        return cls(model, tokenizer, processor, label_sets, min_score, source=name)


def _features(output) -> torch.Tensor:
    """The projected features of ``get_image_features`` / ``get_text_features``: a tensor in
    transformers 4, the output's ``pooler_output`` in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _load_model(folder: Path, dtype: torch.dtype | None):
    """(model, tokenizer, image processor) of a CLIP or SigLIP folder, safetensors only."""
    from transformers import AutoTokenizer, CLIPModel, SiglipModel

    from ..models.processors import image_processor_class

    config = read_json_object(folder / "config.json", AnnotatorError, "zero-shot model config")
    model_type = config.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise AnnotatorError(
            f"{folder}: the zero-shot annotator reads CLIP or SigLIP models, this config names "
            f"model_type {model_type!r}"
        )
    model_class, processor_class = {
        "clip": (CLIPModel, image_processor_class("CLIPImageProcessor")),
        "siglip": (SiglipModel, image_processor_class("SiglipImageProcessor")),
    }[model_type]
    options = {} if dtype is None else {"dtype": dtype}
    try:
        model = model_class.from_pretrained(folder, use_safetensors=True, **options)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        processor = processor_class.from_pretrained(folder)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise AnnotatorError(
            f"cannot load the zero-shot model in {folder} ({first_line(err)})"
        ) from err
    return model, tokenizer, processor
