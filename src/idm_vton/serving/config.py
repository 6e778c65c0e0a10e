"""Server settings and the validated parameters of one try-on request.

Everything a client sends is checked here, at the boundary, and refused with one line
(:class:`ParameterError`, HTTP 400) naming the field, the allowed range and what came in.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

from ..enums import GarmentCategory
from ..errors import IdmVtonError

__all__ = [
    "SEED_RANGE",
    "ParameterError",
    "ServeConfig",
    "TryOnParams",
]

#: Seeds are 32-bit; image ``j`` of a request uses ``(seed + j) % SEED_RANGE``.
SEED_RANGE = 2**32


class ParameterError(IdmVtonError, ValueError):
    """A request parameter outside its allowed values (HTTP 400)."""


@dataclass
class ServeConfig:
    """Settings of one server process (``idm-vton serve`` options).

    ``max_queue``: requests waiting (not yet running) before new ones get HTTP 429;
    ``max_batch``: people rendered in one pipeline call (requests for the same garment and
    settings share it); ``max_upload_bytes``: per uploaded file; ``timeout_s``: per request, from
    its arrival to its answer; ``garment_cache_bytes``: GarmentNet features kept across requests
    (0 = none). ``default_*`` are used for fields a request leaves out.
    """

    model: str = "tiny"
    device: str = "cpu"
    dtype: str = "fp32"
    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str | None = None
    max_queue: int = 64
    max_batch: int = 4
    max_upload_bytes: int = 20 * 1024 * 1024
    max_images: int = 4
    max_steps: int = 100
    timeout_s: float = 600.0
    job_ttl_s: float = 600.0
    garment_cache_bytes: int = 0
    default_steps: int = 30
    default_guidance: float = 2.0
    default_category: str = "upper_body"
    preprocess_models: str | None = None
    memory_options: dict = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        """The built-in random model: its output is noise."""
        return self.model == "tiny"


@dataclass(frozen=True)
class TryOnParams:
    """One request's settings, validated. ``seed`` is always set (a random one if not given)."""

    description: str
    category: str
    steps: int
    guidance: float
    seed: int
    num_images: int
    paste_back: bool

    @classmethod
    def parse(
        cls,
        config: ServeConfig,
        *,
        description: str | None = None,
        category: str | None = None,
        steps: object = None,
        guidance: object = None,
        seed: object = None,
        num_images: object = None,
        paste_back: object = None,
    ) -> TryOnParams:
        """Check and complete the fields of a request (strings from a form are accepted)."""
        description = (description or "").strip()
        if len(description) > 500:
            raise ParameterError(f"description: at most 500 characters, got {len(description)}")
        category = (category or config.default_category).strip()
        if category not in GarmentCategory.values():
            raise ParameterError(
                f"category: expected one of {', '.join(GarmentCategory.values())}, got {category!r}"
            )
        steps = _integer("steps", steps, config.default_steps, 1, config.max_steps)
        guidance = _number("guidance", guidance, config.default_guidance, 0.0, 30.0)
        seed = _integer("seed", seed, -1, -1, SEED_RANGE - 1)
        if seed == -1:
            seed = secrets.randbelow(SEED_RANGE)
        num_images = _integer("num_images", num_images, 1, 1, config.max_images)
        return cls(
            description=description,
            category=category,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            paste_back=_boolean("paste_back", paste_back, True),
        )

    @property
    def seeds(self) -> list[int]:
        """The seed of each image of this request."""
        return [(self.seed + j) % SEED_RANGE for j in range(self.num_images)]


def _integer(name: str, value: object, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}: expected an integer, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ParameterError(f"{name}: expected an integer, got {value!r}")
    if not low <= number <= high:
        raise ParameterError(f"{name}: expected {low}..{high}, got {int(number)}")
    return int(number)


def _number(name: str, value: object, default: float, low: float, high: float) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ParameterError(f"{name}: expected a number in {low:g}..{high:g}, got {value!r}")
    return number


def _boolean(name: str, value: object, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ParameterError(f"{name}: expected true or false, got {value!r}")
