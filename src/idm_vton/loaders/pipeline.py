"""Load IDM-VTON's components from a checkpoint folder or a Hugging Face hub id.

:func:`load_components` returns the components as a dict; the pipeline class builds itself from
them (``TryOnPipeline.from_pretrained`` calls it and then ``cls(**components)``), so loading
never imports the pipeline back, as in diffusers.

Reads the published layout (``unet/`` with ``ip_image_proj``, ``unet_encoder/``, pickled or
safetensors weights, fp32 or fp16), the golden-fixture layout (``tryon_unet/``, ``garment_unet/``)
and this project's own layout written by ``TryOnPipeline.save_pretrained`` / ``idm-vton convert``
(``unet/``, ``garment_unet/``, ``image_projection/``, safetensors only).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..errors import CheckpointError, IdmVtonError
from ..models.tryon_net import ImageProjection, attach_ip_adapter
from ..schedulers import SchedulerName, build_scheduler
from .checkpoint import (
    CHECKPOINT_SOURCE,
    check_state_dict,
    convert_garment_state_dict,
    convert_tryon_state_dict,
    read_state_dict,
    variant_name,
    weight_files,
)
from .json_files import read_json_object
from .model_size import check_model_size
from .weights import building_from, check_weight_file, pickle_failure

logger = logging.getLogger(__name__)

TRYON_DIRS = ("unet", "tryon_unet")
GARMENT_DIRS = ("garment_unet", "unet_encoder")
HUB_ID = "yisol/IDM-VTON"
IP_ADAPTER_CONFIG = "ip_adapter_config.json"
RESAMPLER_CONFIG = "resampler_config.json"

# EMA bookkeeping that the published unet/config.json inherits from SDXL-inpainting (diffusers'
# EMAModel writes it into the config it saves); no model takes it, diffusers warns about it.
EMA_CONFIG_KEYS = frozenset(
    (
        "decay",
        "inv_gamma",
        "min_decay",
        "optimization_step",
        "power",
        "update_after_step",
        "use_ema_warmup",
    )
)

# IDM-VTON's Resampler (IP-Adapter Plus SDXL ViT-H): dim 1280, depth 4, 20 heads of 64.
_DEFAULT_RESAMPLER = {
    "dim": 1280,
    "depth": 4,
    "dim_head": 64,
    "heads": 20,
    "num_queries": 16,
    "ff_mult": 4,
}


def find_component(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name / "config.json").is_file():
            return root / name
    raise CheckpointError(
        f"{root} has no {what} folder (looked for {' or '.join(n + '/config.json' for n in names)})"
    )


def _read_json(path: Path) -> dict:
    """A checkpoint's JSON file (a config), which must hold a JSON object."""
    return read_json_object(path, CheckpointError, "checkpoint file")


@contextmanager
def _loading(folder: Path, what: str, files: list[Path] = ()):
    """Every failure of a library loader or constructor inside becomes one
    :class:`CheckpointError` naming ``folder`` (and the pickle of ``files`` it refused, if any).

    The one wrapper every component load goes through: diffusers and transformers raise many
    kinds of errors on a damaged folder (``OSError``, ``ValueError``, ``TypeError``,
    ``KeyError``, ``UnpicklingError``...), each of them a user's file, not a bug here.
    """
    try:
        yield
    except (IdmVtonError, MemoryError, AssertionError):  # ours, memory (bounded elsewhere), bugs
        raise
    except Exception as err:  # noqa: BLE001 - library loaders raise many kinds
        raise CheckpointError(_load_failure(folder, what, files, err)) from err


def _load_failure(folder: Path, what: str, files, err: BaseException) -> str:
    """The one-line message of :func:`_loading`."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, pickle.UnpicklingError):
        cause = cause.__cause__ or cause.__context__
    for path in files if cause is not None else ():
        if path.suffix != ".safetensors":
            reason, damaged = pickle_failure(path, cause)
            if damaged:
                return f"{path} is truncated or corrupt ({reason}): download it again"
            return f"{path} was refused for safety: {reason} (only tensors are loaded from pickles)"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0].split(". ")[0][:300] if lines else type(err).__name__
    return f"cannot load {what} from {folder}: {first}"


def _check_json_files(folder: Path) -> None:
    """Every ``*.json`` of a component folder (config, preprocessor and tokenizer files) must
    hold a JSON object, before a library loader reads it and fails in its own words."""
    for path in sorted(folder.glob("*.json")):
        _read_json(path)


def _unet_config(folder: Path) -> dict:
    """A UNet config.json without private (``_*``) and EMA bookkeeping keys, its size checked
    (:func:`~idm_vton.loaders.model_size.check_model_size`) before anything is built."""
    config = _read_json(folder / "config.json")
    check_model_size(config, folder / "config.json", "UNet")
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in EMA_CONFIG_KEYS}


# CPU allocations from torch are 64-byte aligned; SIMD kernels take other paths otherwise.
_ALIGNMENT = 64


def realign_parameters(module: torch.nn.Module) -> torch.nn.Module:
    """Move every CPU parameter and buffer that sits at an unaligned address into fresh memory.

    safetensors (ours, diffusers' and transformers' loaders alike) hands out zero-copy views into
    the file mapping at whatever byte offset the header leaves, often 8 or 24 bytes past a
    64-byte boundary. CPU kernels take their unaligned paths on such tensors, which round
    differently (about 1e-7 per op), so a reloaded model would not reproduce the model that was
    saved. A copy in torch-allocated memory is aligned and also releases the file mapping.
    """
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, tensor in table.items():
                if tensor is None or tensor.device.type != "cpu" or tensor.numel() == 0:
                    continue
                if tensor.data_ptr() % _ALIGNMENT:
                    if isinstance(tensor, torch.nn.Parameter):
                        tensor.data = tensor.data.clone()
                    else:
                        table[name] = tensor.clone()
    return module


def _load_into(module: torch.nn.Module, state: dict, what: str, dtype: torch.dtype | None) -> None:
    check_state_dict(module, state, what)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    realign_parameters(module)


def _resampler_config(folder: Path, unet_config: dict, projection_state: dict) -> dict:
    """Resampler constructor arguments: ``resampler_config.json`` if present, else the weights.

    The published checkpoint has no Resampler config; its sizes follow from the weight shapes
    except the head split of the attention width, which is IDM-VTON's 64-channel heads.
    """
    raw = _read_json(folder / RESAMPLER_CONFIG) if (folder / RESAMPLER_CONFIG).is_file() else {}
    config = {k: raw[k] for k in (*_DEFAULT_RESAMPLER, "embedding_dim", "output_dim") if k in raw}
    latents = projection_state.get("resampler.latents")
    proj_in = projection_state.get("resampler.proj_in.weight")
    to_q = projection_state.get("resampler.layers.0.attn.to_q.weight")
    ff_in = projection_state.get("resampler.layers.0.ff.1.net.0.proj.weight")
    if latents is None or proj_in is None or to_q is None or ff_in is None:
        raise CheckpointError(f"{folder}: incomplete Resampler weights (encoder_hid_proj.*)")
    config["num_queries"], config["dim"] = latents.shape[1], latents.shape[2]
    config["embedding_dim"] = proj_in.shape[1]
    config["depth"] = len(
        {k.split(".")[2] for k in projection_state if k.startswith("resampler.layers.")}
    )
    config["ff_mult"] = ff_in.shape[0] // latents.shape[2]
    config.setdefault("output_dim", unet_config["cross_attention_dim"])
    inner = to_q.shape[0]
    if "heads" not in config or "dim_head" not in config:
        dim_head = config.get("dim_head", _DEFAULT_RESAMPLER["dim_head"])
        if inner % dim_head:
            raise CheckpointError(
                f"{folder}: cannot tell the Resampler's head count from an attention width of {inner}; "
                f"add {RESAMPLER_CONFIG} with 'heads' and 'dim_head'"
            )
        config["dim_head"], config["heads"] = dim_head, inner // dim_head
    if config["heads"] * config["dim_head"] != inner:
        raise CheckpointError(
            f"{folder}: {RESAMPLER_CONFIG} says {config['heads']} x {config['dim_head']} attention "
            f"channels, the weights have {inner}"
        )
    return config


def _load_projection(
    folder: Path,
    unet_config: dict,
    projection_state: dict,
    projection_folder: Path | None,
    dtype: torch.dtype | None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> ImageProjection:
    """The Resampler from its own folder, or from the TryonNet weights that hold it."""
    if projection_folder is not None:
        if projection_state:
            raise CheckpointError(f"{folder} and {projection_folder} both hold a Resampler")
        return load_component(
            ImageProjection.from_pretrained,
            projection_folder,
            "IP-Adapter Resampler",
            variant,
            use_safetensors,
            torch_dtype=dtype,
        )
    if not projection_state:
        raise CheckpointError(f"{folder} holds no IP-Adapter Resampler (encoder_hid_proj.*)")
    config = _resampler_config(folder, unet_config, projection_state)
    with _loading(folder, "IP-Adapter Resampler"), init_empty_weights():
        projection = ImageProjection(**config)
    _load_into(projection, projection_state, f"Resampler ({folder})", dtype)
    return projection


def _tryon_config(folder: Path) -> dict:
    config = _unet_config(folder)
    # Stock diffusers refuses "ip_image_proj" at construction: the Resampler is a component of
    # its own here and the UNet is built without it.
    if config.get("encoder_hid_dim_type") == "ip_image_proj":
        config["encoder_hid_dim_type"] = None
        config["encoder_hid_dim"] = None
    return config


def _ip_adapter_settings(folder: Path) -> tuple[int, float]:
    """(IP token count, IP scale) from ``ip_adapter_config.json`` (default 16 and 1.0)."""
    path = folder / IP_ADAPTER_CONFIG
    ip = _read_json(path) if path.exists() else {}
    num_tokens, scale = ip.get("num_tokens", 16), ip.get("scale", 1.0)
    if type(num_tokens) is not int or num_tokens < 1:
        raise CheckpointError(
            f"{path}: 'num_tokens' must be a positive integer, got {num_tokens!r}"
        )
    if type(scale) not in (int, float) or not math.isfinite(scale):
        raise CheckpointError(f"{path}: 'scale' must be a finite number, got {scale!r}")
    return num_tokens, float(scale)


def load_tryon_unet(
    folder: Path,
    dtype: torch.dtype | None = None,
    projection_folder: Path | None = None,
    *,
    projection: ImageProjection | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> tuple[UNet2DConditionModel, ImageProjection]:
    """TryonNet (stock UNet + IP-Adapter processors) and its Resampler from a component folder.

    The Resampler comes from ``projection_folder``, else from the TryonNet weights (published
    layout); a given ``projection`` is used instead (the folder's Resampler weights, if any, are
    then left out, and logged).
    """
    folder = Path(folder)
    config = _tryon_config(folder)
    num_tokens, scale = _ip_adapter_settings(folder)
    state = read_state_dict(folder, variant, use_safetensors)
    with building_from(folder, CheckpointError):
        unet_state, projection_state = convert_tryon_state_dict(state)
    if projection is None:
        projection = _load_projection(
            folder, config, projection_state, projection_folder, dtype, variant, use_safetensors
        )
    elif projection_state:
        logger.info("%s: Resampler weights left out (an image_projection was given)", folder)
    if projection.config.num_queries != num_tokens:
        raise CheckpointError(
            f"{folder}: the Resampler makes {projection.config.num_queries} tokens, "
            f"{IP_ADAPTER_CONFIG} expects {num_tokens}"
        )
    with _loading(folder, "TryonNet"), init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
        attach_ip_adapter(unet, num_tokens=num_tokens, scale=scale)
    _load_into(unet, unet_state, f"TryonNet ({folder})", dtype)
    return unet.eval(), projection.eval()


def load_image_projection(
    root: Path,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> ImageProjection:
    """The Resampler alone: from ``image_projection/``, else from the TryonNet weights (the
    published layout stores it there, so that folder is read)."""
    projection_dir = root / "image_projection"
    if projection_dir.is_dir():
        projection = _load_projection(root, {}, {}, projection_dir, dtype, variant, use_safetensors)
        return projection.eval()
    folder = find_component(root, TRYON_DIRS, "TryonNet")
    state = read_state_dict(folder, variant, use_safetensors)
    with building_from(folder, CheckpointError):
        _, projection_state = convert_tryon_state_dict(state)
    return _load_projection(folder, _tryon_config(folder), projection_state, None, dtype).eval()


def load_garment_unet(
    folder: Path,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> UNet2DConditionModel:
    """GarmentNet: a stock SDXL UNet without added conditioning (it never uses any)."""
    folder = Path(folder)
    config = _unet_config(folder)
    config.update(addition_embed_type=None, projection_class_embeddings_input_dim=None)
    config.update(encoder_hid_dim_type=None, encoder_hid_dim=None)
    with _loading(folder, "GarmentNet"), init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    state, dropped = convert_garment_state_dict(
        read_state_dict(folder, variant, use_safetensors), set(unet.state_dict())
    )
    if dropped:
        logger.info("GarmentNet: %d unused add_embedding weights left out", len(dropped))
    _load_into(unet, state, f"GarmentNet ({folder})", dtype)
    return unet.eval()


def save_ip_adapter_config(unet: UNet2DConditionModel, folder: Path) -> None:
    """Write ``ip_adapter_config.json`` (IP token count and scale) next to a saved TryonNet."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    procs = [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
    assert procs, "TryonNet has no IP-Adapter processors"
    config = {"num_tokens": int(procs[0].num_tokens[0]), "scale": float(procs[0].scale[0])}
    (Path(folder) / IP_ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def resolve_checkpoint(
    name_or_path: str | Path,
    local_files_only: bool = False,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> Path:
    """A local folder as is; otherwise download (or find in the cache) a hub snapshot.

    Without network (``HF_HUB_OFFLINE``, ``local_files_only``, or a hub that does not answer
    :func:`~idm_vton.loaders.hub.hub_unreachable_reason`'s one quick check) only the cache is
    read, and a model missing from it is one :class:`~idm_vton.errors.CheckpointError` line.

    ``revision``, ``cache_dir``, ``token`` and ``force_download`` go to
    ``huggingface_hub.snapshot_download``; ``variant`` adds that variant's pickles to what is
    fetched, ``use_safetensors=True`` leaves pickles out.
    """
    cache_dir_arg = cache_dir
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"checkpoint folder not found: {name_or_path}")
    from huggingface_hub import snapshot_download

    from .hub import OFFLINE_HINT, cache_dir, cache_only_reason

    patterns = ["model_index.json", "*/config.json", "*/*.json", "*/*.txt", "*.json"]
    patterns.append("*/*.safetensors")
    if use_safetensors is not True:
        pickles = ["diffusion_pytorch_model.bin", "pytorch_model.bin"]
        patterns += [f"*/{variant_name(n, v)}" for n in pickles for v in {None, variant}]
    hub = dict(allow_patterns=patterns, revision=revision, cache_dir=cache_dir_arg, token=token)
    offline = None if force_download else cache_only_reason(local_files_only)
    if offline is None:
        try:
            return Path(
                snapshot_download(
                    name, local_files_only=False, force_download=force_download, **hub
                )
            )
        except Exception as err:  # noqa: BLE001 - any hub failure gets the same advice
            failure = f"the hub failed ({type(err).__name__})"
            cause: Exception | None = err
    else:
        failure, cause = offline, None
    try:
        return Path(snapshot_download(name, local_files_only=True, **hub))
    except Exception:  # noqa: BLE001 - not (completely) in the cache
        pass
    where = cache_dir_arg or cache_dir()
    raise CheckpointError(
        f"'{name}' is not in the Hugging Face cache {where} and {failure}; run `idm-vton "
        f"download --model {name}` with network access ({OFFLINE_HINT}), or pass a local "
        "folder: --model /path/to/IDM-VTON"
    ) from cause


def _file_kwargs(folder: Path, variant: str | None, use_safetensors: bool | None) -> dict:
    """``variant`` / ``use_safetensors`` for a diffusers or transformers loader: the variant only
    where the folder has its files (those loaders refuse a variant they cannot find)."""
    if use_safetensors is None and not any(folder.glob("*.safetensors")):
        # Only pickles here: say so, or diffusers first looks for safetensors and logs an
        # error line of its own ahead of any refusal of the pickle.
        use_safetensors = False if any(folder.glob("*.bin")) else None
    kwargs = {} if use_safetensors is None else {"use_safetensors": use_safetensors}
    if variant and any(folder.glob(f"*.{variant}.*")):
        kwargs["variant"] = variant
    return kwargs


def load_component(
    loader,
    folder: Path,
    what: str,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    **kwargs,
):
    """``loader(folder, **kwargs)`` (a diffusers / transformers ``from_pretrained``) after the
    checks every component folder gets: its JSON files hold objects, its weight files are its
    own and not placeholders; any failure of the loader becomes one :class:`CheckpointError`
    naming ``folder`` (:func:`_loading`). ``variant`` / ``use_safetensors`` choose the files."""
    if not folder.is_dir():
        raise CheckpointError(f"missing component folder: {folder} ({what})")
    _check_json_files(folder)
    # A folder without weights (tokenizers) is left to the library, which names what it misses.
    files = weight_files(folder, variant, use_safetensors, required=False)
    kwargs.update(_file_kwargs(folder, variant, use_safetensors))
    for path in files:
        check_weight_file(path, f"{folder.name}/", CHECKPOINT_SOURCE, error=CheckpointError)
    with _loading(folder, what, files):
        component = loader(folder, **kwargs)
    if isinstance(component, torch.nn.Module):
        realign_parameters(component)
    return component


#: The components ``TryOnPipeline.from_pretrained`` accepts as overrides.
COMPONENTS = (
    "vae",
    "unet",
    "garment_unet",
    "image_projection",
    "image_encoder",
    "scheduler",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "feature_extractor",
)
_TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def load_components(
    name_or_path: str | Path,
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool = False,
    load_text_encoders: bool = True,
    scheduler: SchedulerName | str | SchedulerMixin = SchedulerName.DDPM,
    *,
    revision: str | None = None,
    variant: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    use_safetensors: bool | None = None,
    **components,
) -> dict:
    """The components of a :class:`~idm_vton.pipelines.tryon.TryOnPipeline` (keyword name ->
    module, scheduler, tokenizer or processor) from a checkpoint folder or hub id.

    ``scheduler``: the sampler, built from the folder's ``scheduler/scheduler_config.json``
    whatever class that names (DDPM by default, as the reference), or a scheduler object.
    ``components`` (``unet=``, ``vae=``, ... see :data:`COMPONENTS`): used as given, their
    folders are not read; any other keyword raises ``TypeError``. The hub keywords go to
    :func:`resolve_checkpoint`; ``variant`` and ``use_safetensors`` choose each folder's files.
    """
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise TypeError(
            f"TryOnPipeline.from_pretrained() got unexpected keyword argument(s): "
            f"{', '.join(unknown)}"
        )
    root = resolve_checkpoint(
        name_or_path,
        local_files_only=local_files_only,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        force_download=force_download,
        variant=variant,
        use_safetensors=use_safetensors,
    )
    files = dict(variant=variant, use_safetensors=use_safetensors)
    dtype = torch_dtype or torch.float32
    parts = dict(components)
    if "unet" not in parts:
        projection_dir = root / "image_projection"
        parts["unet"], parts["image_projection"] = load_tryon_unet(
            find_component(root, TRYON_DIRS, "TryonNet"),
            dtype,
            projection_folder=projection_dir if projection_dir.is_dir() else None,
            projection=parts.get("image_projection"),
            **files,
        )
    elif "image_projection" not in parts:
        parts["image_projection"] = load_image_projection(root, dtype, **files)
    if "garment_unet" not in parts:
        garment_dir = find_component(root, GARMENT_DIRS, "GarmentNet")
        parts["garment_unet"] = load_garment_unet(garment_dir, dtype, **files)
    if "vae" not in parts:
        # The SDXL VAE overflows in fp16: keep it in fp32 then (bf16 is safe).
        vae_dtype = torch.float32 if dtype == torch.float16 else dtype
        parts["vae"] = _load_vae(root, vae_dtype, **files)
    if "image_encoder" not in parts:
        parts["image_encoder"] = load_image_encoder(root, dtype, **files)
    parts["scheduler"] = _load_scheduler(root, scheduler)
    if "feature_extractor" not in parts:
        parts["feature_extractor"] = load_feature_extractor(root)
    if load_text_encoders and not _saved_without_text_encoders(root):
        missing = [name for name in _TEXT_COMPONENTS if name not in parts]
        parts.update(_load_text_components(root, dtype, missing, **files))
    return parts


def _saved_without_text_encoders(root: Path) -> bool:
    """Whether ``root`` is a pipeline saved without its text encoders: its ``model_index.json``
    names them as None (diffusers writes ``[null, null]``) and their folders are absent."""
    index_path = root / "model_index.json"
    if not index_path.is_file():
        return False
    index = _read_json(index_path)
    return all(
        index.get(name) in (None, [None, None]) and not (root / name).is_dir()
        for name in _TEXT_COMPONENTS
    )


def _load_vae(root: Path, dtype: torch.dtype, **files):
    from diffusers import AutoencoderKL

    if (root / "vae" / "config.json").is_file():
        check_model_size(
            _read_json(root / "vae" / "config.json"), root / "vae" / "config.json", "VAE"
        )
    vae = load_component(
        AutoencoderKL.from_pretrained, root / "vae", "VAE", torch_dtype=dtype, **files
    )
    return vae.eval()


def load_image_encoder(root: Path, dtype: torch.dtype, **files):
    """The CLIP vision encoder of the checkpoint folder ``root`` (``image_encoder/``), in eval
    mode; ``files`` are diffusers' ``variant`` / ``use_safetensors``."""
    from transformers import CLIPVisionModelWithProjection

    encoder = load_component(
        CLIPVisionModelWithProjection.from_pretrained,
        root / "image_encoder",
        "image encoder",
        dtype=dtype,
        **files,
    )
    return encoder.eval()


def _load_scheduler(root: Path, scheduler: SchedulerName | str | SchedulerMixin) -> SchedulerMixin:
    """The sampler ``scheduler`` built from ``scheduler/scheduler_config.json`` (a scheduler
    object is used as is, as a component override, and the folder is not read)."""
    if isinstance(scheduler, SchedulerMixin):
        return scheduler
    scheduler_dir = root / "scheduler"
    config_path = scheduler_dir / "scheduler_config.json"
    if not config_path.is_file():
        raise CheckpointError(f"missing component folder: {scheduler_dir} (scheduler)")
    config = _read_json(config_path)
    with _loading(scheduler_dir, "scheduler"):
        return build_scheduler(scheduler, config)


def _load_text_components(root: Path, dtype: torch.dtype, names: list[str], **files) -> dict:
    """The SDXL text encoders and tokenizers named in ``names``."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    loaders = {
        "text_encoder": (CLIPTextModel.from_pretrained, "text encoder", {"dtype": dtype, **files}),
        "text_encoder_2": (
            CLIPTextModelWithProjection.from_pretrained,
            "text encoder 2",
            {"dtype": dtype, **files},
        ),
        "tokenizer": (CLIPTokenizer.from_pretrained, "tokenizer", {}),
        "tokenizer_2": (CLIPTokenizer.from_pretrained, "tokenizer 2", {}),
    }
    return {
        name: load_component(loaders[name][0], root / name, loaders[name][1], **loaders[name][2])
        for name in names
    }


def load_feature_extractor(root: Path):
    """The CLIP preprocessing config of the checkpoint (its own or the image encoder's),
    else CLIP's at the image encoder's input size (``image_encoder/config.json``)."""
    from ..models.processors import clip_image_processor, image_processor_class

    for folder in (root / "feature_extractor", root / "image_encoder"):
        if (folder / "preprocessor_config.json").is_file():
            return load_component(
                image_processor_class().from_pretrained, folder, "feature extractor"
            )
    config_path = root / "image_encoder" / "config.json"
    size = _read_json(config_path).get("image_size") if config_path.is_file() else None
    return clip_image_processor(size if isinstance(size, int) and size > 0 else None)
