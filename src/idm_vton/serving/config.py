"""Server settings and the validated parameters of one try-on request.

:class:`ServeConfig` (and :class:`RayOptions` for ``--ray``) hold the settings of one server; each
field with an ``option()`` is one ``idm-vton serve`` flag. Everything a client sends is checked
by :meth:`TryOnParams.parse`, at the boundary, and refused with one line (:class:`ParameterError`,
HTTP 400) naming the field, the allowed values and what came in.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..defaults import GUIDANCE_SCALE, NUM_INFERENCE_STEPS
from ..enums import DType, GarmentCategory
from ..errors import IdmVtonError, UsageError
from ..options import option
from ..pipelines.memory import MemoryOptions

__all__ = [
    "API_KEY_ENV",
    "AUTO",
    "MAX_GARMENTS",
    "GarmentParams",
    "SEED_RANGE",
    "ParameterError",
    "RayOptions",
    "ServeConfig",
    "TryOnParams",
    "api_key_or_environment",
    "base_url",
    "resolve_device_and_dtype",
]

#: Seeds are 32-bit; image ``j`` of a request uses ``(seed + j) % SEED_RANGE``.
SEED_RANGE = 2**32
#: Environment variable holding the API key when none is given.
API_KEY_ENV = "IDM_VTON_API_KEY"

_MIB = 1024 * 1024


class ParameterError(IdmVtonError, ValueError):
    """A request parameter outside its allowed values (HTTP 400)."""


def _positive(text: str, unit: str) -> float:
    value = float(text)
    # Past 2**31 units a number is a typo, and would overflow where it is used as a count.
    if not math.isfinite(value) or not 0 <= value <= 2**31:
        raise ValueError(f"expected a number of {unit} from 0 to {2**31}, got {text!r}")
    return value


def _megabytes(text: str) -> int:
    """A size given in MB on the command line, in bytes."""
    return int(_positive(text, "MB") * _MIB)


def _megapixels(text: str) -> int:
    """A pixel count given in megapixels on the command line."""
    return int(_positive(text, "megapixels") * 1_000_000)


def _hours(text: str) -> float:
    """A duration given in hours on the command line, in seconds."""
    return _positive(text, "hours") * 3600.0


@dataclass
class ServeConfig:
    """Settings of one server process (the ``idm-vton serve`` options).

    ``device`` and ``dtype`` are resolved names (``cuda``, ``bf16``; see
    :func:`resolve_device_and_dtype`). ``max_queue``: requests waiting (not yet running) before
    new ones get HTTP 429; ``max_batch``: people rendered in one pipeline call (requests for the
    same garment and settings share it); ``max_upload_bytes``: per uploaded file; ``timeout_s``:
    per request, from its arrival to its answer; ``garment_cache_bytes``: GarmentNet features
    kept across requests (0 = none). ``default_*`` are used for fields a request leaves out.
    """

    model: str = option("yisol/IDM-VTON", shared="model")
    device: str = option("cpu", shared="device")
    dtype: str = option(DType.FP32.value, shared="dtype")
    preprocess_models: str | None = option(None, shared="preprocess_models")
    annotator: str | None = option(None, shared="annotator")
    host: str = option(
        "127.0.0.1", "address to listen on (default %(default)s: this machine only; 0.0.0.0 = all)"
    )
    port: int = option(7860, "port (default %(default)s)")
    api_key: str | None = option(
        None, f"require this key for the API and the UI (default: ${API_KEY_ENV}; unset = open)"
    )
    max_queue: int = option(64, "requests waiting before 429 (default 64)")
    max_batch: int = option(
        4, "people per pipeline call; same-garment requests share one (default %(default)s)"
    )
    max_upload_bytes: int = option(
        20 * _MIB,
        "per uploaded image (default 20)",
        flag="--max-upload-mb",
        parse=_megabytes,
        metavar="MAX_UPLOAD_MB",
    )
    max_images: int = option(4, "images per request at most (default 4)")
    timeout_s: float = option(
        600.0, "seconds per request (default 600)", flag="--timeout", metavar="TIMEOUT"
    )
    garment_cache_bytes: int = option(
        0,
        "keep GarmentNet features of recent garments (MB; SDXL: ~158 MB per step in bf16; "
        "default 0 = off)",
        flag="--garment-cache-mb",
        parse=_megabytes,
        metavar="GARMENT_CACHE_MB",
    )
    max_request_pixels: int = option(
        64_000_000,
        "megapixels of images in one request at most (default 64)",
        flag="--max-request-mp",
        parse=_megapixels,
        metavar="MAX_REQUEST_MP",
    )
    max_queue_pixels: int = option(
        256_000_000,
        "megapixels of images held by waiting and running requests at most (default 256)",
        flag="--max-queue-mp",
        parse=_megapixels,
        metavar="MAX_QUEUE_MP",
    )
    max_result_bytes: int = option(
        512 * _MIB,
        "MB of finished results (PNG) kept for clients to fetch (default 512)",
        flag="--max-results-mb",
        parse=_megabytes,
        metavar="MAX_RESULTS_MB",
    )
    max_temp_bytes: int = option(
        1024 * _MIB,
        "MB of the web UI's uploads and results on disk (default 1024)",
        flag="--max-temp-mb",
        parse=_megabytes,
        metavar="MAX_TEMP_MB",
    )
    shutdown_grace_s: float = option(
        15.0,
        "seconds running requests get to finish after SIGTERM/Ctrl-C (default 15)",
        flag="--shutdown-grace",
        metavar="SECONDS",
    )
    read_timeout_s: float = option(
        30.0,
        "seconds a client may take to send a request's headers; its body must then keep "
        "coming at 50 KB/s (default 30)",
        flag="--read-timeout",
        metavar="SECONDS",
    )
    max_connections: int = option(256, "open connections at most (default 256)")
    session_ttl_s: float = option(
        12 * 3600.0,
        "hours a web UI sign-in lasts (default 12)",
        flag="--session-hours",
        parse=_hours,
        metavar="HOURS",
    )
    max_steps: int = 100
    job_ttl_s: float = 600.0
    default_steps: int = NUM_INFERENCE_STEPS
    default_guidance: float = GUIDANCE_SCALE
    default_category: str = GarmentCategory.UPPER_BODY.value
    memory_options: MemoryOptions = field(default_factory=MemoryOptions)

    def __post_init__(self) -> None:
        if isinstance(self.memory_options, dict):  # as plain data, e.g. sent to a Ray replica
            self.memory_options = MemoryOptions(**self.memory_options)
        for name, least in (("max_queue", 0), ("max_batch", 1), ("max_images", 1)):
            if getattr(self, name) < least:
                flag = name.replace("_", "-")
                raise UsageError(f"--{flag} must be >= {least}, got {getattr(self, name)}")
        if self.max_upload_bytes <= 0 or self.timeout_s <= 0:
            raise UsageError("--max-upload-mb and --timeout must be > 0")
        for name, flag in (
            ("max_request_pixels", "--max-request-mp"),
            ("max_queue_pixels", "--max-queue-mp"),
            ("max_temp_bytes", "--max-temp-mb"),
            ("read_timeout_s", "--read-timeout"),
            ("max_connections", "--max-connections"),
            ("session_ttl_s", "--session-hours"),
        ):
            if not getattr(self, name) > 0:
                raise UsageError(f"{flag} must be > 0, got {getattr(self, name)}")
        if self.max_queue_pixels < self.max_request_pixels:
            raise UsageError("--max-queue-mp must be at least --max-request-mp")
        if not 0 <= self.shutdown_grace_s < math.inf:
            raise UsageError(f"--shutdown-grace must be >= 0, got {self.shutdown_grace_s}")
        if not 0 < self.port < 65536:
            raise UsageError(f"--port must be 1..65535, got {self.port}")

    @property
    def is_tiny(self) -> bool:
        """The built-in random model: its output is noise."""
        return self.model == "tiny"


@dataclass(frozen=True)
class RayOptions:
    """How ``idm-vton serve --ray`` deploys the server on Ray Serve (see :mod:`.ray_app`)."""

    replicas: int = option(1, "model replicas, one per GPU (default 1)")
    max_replicas: int | None = option(
        None, "autoscale between --replicas and this many replicas by queue length"
    )
    address: str | None = option(
        None,
        "join this Ray cluster (default: $RAY_ADDRESS, else a local Ray instance on 127.0.0.1)",
        flag="--ray-address",
        metavar="RAY_ADDRESS",
    )
    local: bool = option(
        False,
        "start a local Ray instance on this machine even when $RAY_ADDRESS is set; every Ray "
        "service of a local instance listens on 127.0.0.1 only",
        flag="--ray-local",
    )
    ingress_resources: str | None = option(
        None,
        "JSON of Ray resources placing the ingress (jobs, queue, UI), e.g. '{\"ingress\": 1}' "
        "(default: the head node)",
    )

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise UsageError(f"--replicas must be >= 1, got {self.replicas}")
        if self.local and self.address:
            raise UsageError("--ray-local starts a Ray instance here: leave out --ray-address")
        if self.ingress_resources is not None:
            import json

            try:
                resources = json.loads(self.ingress_resources)
            except ValueError:
                resources = None
            valid = isinstance(resources, dict) and all(
                isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
                for k, v in resources.items()
            )
            if not valid:
                raise UsageError(
                    "--ingress-resources: expected a JSON object of resource amounts, got "
                    f"{self.ingress_resources!r}"
                )


def base_url(config: ServeConfig) -> str:
    """The URL a browser on this machine opens for ``config``'s host and port."""
    host = config.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.port}/"


def resolve_device_and_dtype(device: str | None, dtype: DType | str | None) -> tuple[str, str]:
    """The device and dtype names a server runs with; ``None`` chooses as every command does
    (CUDA when available; bf16 on CUDA, fp32 otherwise). An unknown or unavailable device or
    dtype raises :class:`~idm_vton.errors.UsageError`."""
    from ..devices import resolve_device, resolve_dtype

    resolved = resolve_device(device)
    return str(resolved), DType.of(resolve_dtype(dtype, resolved)).value


def api_key_or_environment(api_key: str | None) -> str | None:
    """``api_key``, else the key in ``$IDM_VTON_API_KEY``; ``None`` (no key) when both are empty."""
    return api_key or os.environ.get(API_KEY_ENV) or None


#: Garments of one request at most: an outfit is an upper- and a lower-body garment (or a dress).
MAX_GARMENTS = 2
#: The description that asks for V to be read from the garment photo (the annotator).
AUTO = "auto"


@dataclass(frozen=True)
class GarmentParams:
    """One garment's settings: its category (None: read from the photo by the annotator, which
    needs ``description`` ``"auto"``) and its description V (``"auto"``: read from the photo)."""

    category: str | None
    description: str

    @property
    def reads_description(self) -> bool:
        return self.description == AUTO


@dataclass(frozen=True)
class TryOnParams:
    """One request's settings, validated. ``seed`` is always set (a random one if not given).

    ``garments``: one :class:`GarmentParams` per garment, in the order given (several: an outfit,
    rendered one pass per garment, :mod:`idm_vton.pipelines.outfit`); ``auto_crop``: the official
    demo's auto-crop instead of the region around the mask.
    """

    garments: tuple[GarmentParams, ...]
    steps: int
    guidance: float
    seed: int
    num_images: int
    paste_back: bool
    auto_crop: bool = False

    def __post_init__(self) -> None:
        # As plain data (asdict, e.g. sent to a Ray replica) the garments come back as dicts.
        garments = tuple(
            g if isinstance(g, GarmentParams) else GarmentParams(**g) for g in self.garments
        )
        object.__setattr__(self, "garments", garments)

    @property
    def description(self) -> str:
        """The first garment's description (``"auto"``: read from the photo)."""
        return self.garments[0].description

    @property
    def category(self) -> str | None:
        """The first garment's category (None: read from the photo)."""
        return self.garments[0].category

    @property
    def is_outfit(self) -> bool:
        return len(self.garments) > 1

    @classmethod
    def parse(
        cls,
        config: ServeConfig,
        *,
        description: str | Sequence[str | None] | None = None,
        category: str | Sequence[str | None] | None = None,
        steps: object = None,
        guidance: object = None,
        seed: object = None,
        num_images: object = None,
        paste_back: object = None,
        auto_crop: object = None,
        garments: int = 1,
    ) -> TryOnParams:
        """Check and complete the fields of a request (strings from a form are accepted).

        ``garments`` garments were sent; ``description`` and ``category`` are one value for all
        (a list of one) or one per garment. A description ``auto`` (any case) is read from the
        garment photo; a category left out is then read too, else it is the server's default
        (for one garment; an outfit needs them).
        """
        if not 1 <= garments <= MAX_GARMENTS:
            raise ParameterError(
                f"garment: 1 to {MAX_GARMENTS} garments (an upper- and a lower-body garment, or "
                f"a dress), got {garments}"
            )
        descriptions = [_description(d) for d in _per_garment("description", description, garments)]
        categories = _per_garment("category", category, garments)
        parsed = []
        for text, given in zip(descriptions, categories, strict=True):
            if given is not None and str(given).strip():
                # The enum's values or names, in any case, spaces around them ignored.
                name = str(given).strip().lower()
                parsed.append(GarmentCategory.parse(name, "category", ParameterError).value)
            elif text == AUTO:
                parsed.append(None)
            elif garments > 1:
                raise ParameterError(
                    "category: give one per garment, in the order of the garments (or "
                    "description=auto to read them from the photos)"
                )
            else:
                parsed.append(config.default_category)
        steps = _number("steps", steps, config.default_steps, 1, config.max_steps, integer=True)
        guidance = _number("guidance", guidance, config.default_guidance, 0, 30)
        seed = _number("seed", seed, -1, -1, SEED_RANGE - 1, integer=True)
        if seed == -1:
            seed = secrets.randbelow(SEED_RANGE)
        num_images = _number("num_images", num_images, 1, 1, config.max_images, integer=True)
        params = cls(
            garments=tuple(
                GarmentParams(category=c, description=d)
                for c, d in zip(parsed, descriptions, strict=True)
            ),
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            paste_back=_boolean("paste_back", paste_back, True),
            auto_crop=_boolean("auto_crop", auto_crop, False),
        )
        if params.is_outfit:
            _check_outfit(params)
        return params

    @property
    def seeds(self) -> list[int]:
        """The seed of each image of this request."""
        return [(self.seed + j) % SEED_RANGE for j in range(self.num_images)]


def _description(text: str | None) -> str:
    text = (text or "").strip()
    if len(text) > 500:
        raise ParameterError(f"description: at most 500 characters, got {len(text)}")
    return AUTO if text.lower() == AUTO else text


def _per_garment(name: str, value, garments: int) -> list:
    """``value`` (absent, one value, or a list) as one value per garment: a single value is
    every garment's; a list must have one per garment."""
    if value is None or isinstance(value, str):
        return [value] * garments
    values = list(value)
    if len(values) == 1:
        return values * garments
    if len(values) != garments:
        raise ParameterError(
            f"{name}: got {len(values)} values for {garments} garments; give one per garment, "
            "in the order of the garments"
        )
    return values


def _check_outfit(params: TryOnParams) -> None:
    """An outfit must be rendered whole: the categories it has must make one (the others are
    read from the photos, and checked then), and the raw render is not a photo to go on from."""
    from ..pipelines.outfit import plan_outfit

    known = [g.category for g in params.garments if g.category is not None]
    names = [f"garment {i + 1}" for i, g in enumerate(params.garments) if g.category]
    try:
        if known:  # none given: all are read from the photos, and planned then
            plan_outfit(known, names)
    except UsageError as err:
        raise ParameterError(f"category: {err}") from None
    if not params.paste_back:
        raise ParameterError(
            "paste_back: an outfit pastes each pass into the photo (the next pass starts from "
            "it); paste_back=false takes one garment"
        )


def _number(name: str, value: object, default, low, high, *, integer: bool = False):
    """``value`` (a form's string, or a number) as a number in ``low..high``, ``default`` when
    absent; with ``integer`` a whole number (``"3.0"`` is 3), returned as an ``int``."""
    if value is None or value == "":
        return default
    kind = "an integer" if integer else "a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise ParameterError(f"{name}: expected {kind}, got {value!r}")
    if not low <= number <= high:
        raise ParameterError(f"{name}: expected {kind} in {low}..{high}, got {value!r}")
    return int(number) if integer else number


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
