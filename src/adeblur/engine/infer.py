"""Inference: load a trained model, restore images of any size, deblur image files.

* :func:`load_model`: a registered model with its weights (shipped, a weights file or a training
  checkpoint), in eval mode on a device, with TLC local statistics (:func:`set_pool_window`).
* :func:`restore`: one image (or batch) of any size: reflect-padded to ``model.size_multiple`` and cropped
  back; processed whole, or in overlapping tiles blended with a smooth window when asked or when the
  forward pass would need more memory than a budget (:func:`estimate_bytes_per_pixel`); optionally with
  the model's maps (blur mask, motion) at input resolution, stitched like the image.
* :func:`deblur_files`: files, folders and globs to ``<stem>_deblurred.<ext>`` (the ``adeblur deblur``
  command), one :class:`DeblurResult` per input; a bad file is reported and skipped, never half-written.
* :func:`tile_starts` and :func:`seam_ratio`: the tile grid, and how visible its seams are.

Choices (details and measurements in ``docs/deblur.md``):

* Tiles are spread evenly over each axis (every tile has the full size, consecutive tiles overlap by at
  least ``overlap``). Each tile's weight falls to zero towards a side it shares with a neighbour: over
  the overlap ``o`` actually shared, the outer ``o // 4`` pixels get weight 0 (they see the tile's
  zero padding), the next ``o - 2 * (o // 4)`` a raised-cosine ramp, the rest 1. The two ramps of a pair
  sum to 1; the output is the weighted sum divided by the summed weights, in float32 accumulators.
  A model whose receptive field reaches less than ``o // 4`` pixels gives exactly its untiled output.
* TLC: whole-image pooling (NAFNet's channel attention, M2AENet's mask-predictor global feature)
  becomes the mean over a window of ``pool_window`` input pixels, converted to each module's scale.
  Default: 1.5 x the training patch size recorded in the weights (as in the TLC paper), else 384.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.resources
import inspect
import math
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.engine.checkpoint import load_weights
from adeblur.engine.profile import force_blur_mask, measure_peak_memory, resolve_device
from adeblur.errors import AdeblurError, CheckpointError, ConfigError, ImageError, one_line
from adeblur.io import from_rgb, is_image_path, list_images, read_image, to_rgb, write_image
from adeblur.models import build_model, list_models
from adeblur.models.blocks import LOCAL_MEAN_BORDERS

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_OVERLAP",
    "DEFAULT_POOL_WINDOW",
    "MAP_NAMES",
    "DeblurResult",
    "collect_inputs",
    "deblur_files",
    "default_memory_budget",
    "estimate_bytes_per_pixel",
    "load_model",
    "restore",
    "seam_ratio",
    "set_pool_window",
    "shipped_weights",
    "tile_starts",
]

#: The model ``load_model`` and ``adeblur deblur`` use when none is named.
DEFAULT_MODEL = "m2aenet-lite"
#: Default overlap between tiles, in input pixels.
DEFAULT_OVERLAP = 64
#: TLC window in input pixels when the weights do not record their training patch size (1.5 x 256).
DEFAULT_POOL_WINDOW = 384
#: TLC window = this factor x the training patch size (Chu et al. 2022 use 1.5).
POOL_WINDOW_PER_PATCH = 1.5
#: Default memory budget of one forward pass on the CPU (bytes).
CPU_MEMORY_BUDGET = 2 * 2**30
#: Default budget on CUDA: this fraction of the device's free memory.
CUDA_MEMORY_FRACTION = 0.5
#: The maps :func:`restore` returns for M2AENet (``model.extra_maps`` may add more).
MAP_NAMES = ("blur_mask", "blur_probability", "displacement_start", "displacement_end")

_WEIGHTS_PACKAGE = "adeblur"
_WEIGHTS_FOLDER = "weights"
_NO_WEIGHTS = "no trained weights ship for {name!r} yet; pass --weights PATH (a checkpoint or weights file from `adeblur train`)"


# --------------------------------------------------------------------------------------------------
# Models and weights


def shipped_weights(name: str) -> Path | None:
    """The weights file packaged for model ``name`` (``adeblur/weights/<name>.safetensors``), or None.

    >>> shipped_weights("no-such-model") is None
    True
    """
    resource = importlib.resources.files(_WEIGHTS_PACKAGE) / _WEIGHTS_FOLDER / f"{name}.safetensors"
    return Path(str(resource)) if resource.is_file() else None


def _weights_model(metadata: Mapping[str, Any]) -> tuple[str | None, dict[str, Any], int | None]:
    """(model name, build options, training patch size) recorded in weights metadata, where present.

    A training checkpoint records ``{"config": {"model": {"name", "options"}, "data": {"patch_size"}}}``;
    a weights file may record ``{"model": name, "options": {...}, "patch_size": n}``.
    """
    config = metadata.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping):
        model = config["model"]
        data = config.get("data")
        patch = data.get("patch_size") if isinstance(data, Mapping) else None
        return model.get("name"), dict(model.get("options") or {}), patch
    name = metadata.get("model")
    return (name if isinstance(name, str) else None), dict(metadata.get("options") or {}), metadata.get("patch_size")


def load_model(
    name: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    *,
    pool_window: int | str | None = "auto",
) -> nn.Module:
    """Build a registered model, load its weights, and make it ready for inference.

    Args:
        name: registered model name; None -> the name recorded in ``weights``, else
            :data:`DEFAULT_MODEL` (``"m2aenet-lite"``).
        weights: a weights file (``save_weights``) or training checkpoint (``save_checkpoint``; its EMA
            weights when it has them). None -> the shipped weights of the model; models that are not
            trainable (``identity``, the classical methods) need none.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        pool_window: TLC window in input pixels (see :func:`set_pool_window`); ``"auto"``: 1.5 x the
            training patch size the weights record, else :data:`DEFAULT_POOL_WINDOW`; None: the
            whole-image statistics of training.

    Returns:
        The model in eval mode on ``device``.

    Raises:
        ConfigError: unknown model or option; no shipped weights for a trainable model and no
            ``weights``; weights recorded for another model; weights for a model that takes none.
        CheckpointError: an unreadable weights file, or one whose tensors do not fit the model.

    >>> model = load_model("identity", device="cpu")
    >>> model.training
    False
    >>> load_model("m2aenet", device="cpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    adeblur.errors.ConfigError: no trained weights ship for 'm2aenet' yet; pass --weights PATH ...
    """
    target = resolve_device(device)
    state_dict: dict[str, Tensor] | None = None
    options: dict[str, Any] = {}
    patch_size = None
    if weights is not None:
        state_dict, metadata = load_weights(weights)
        recorded, options, patch_size = _weights_model(metadata)
        if name is not None and recorded is not None and recorded != name:
            raise ConfigError(f"weights {str(weights)!r} are for model {recorded!r}, not {name!r}")
        name = name or recorded
    name = name or DEFAULT_MODEL
    specs = {spec.name: spec for spec in list_models()}
    if name not in specs:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(specs)}")
    if weights is None and specs[name].trainable:
        weights = shipped_weights(name)
        if weights is None:
            raise ConfigError(_NO_WEIGHTS.format(name=name))
        state_dict, metadata = load_weights(weights)
        _, options, patch_size = _weights_model(metadata)
    elif weights is not None and not specs[name].trainable:
        raise ConfigError(f"model {name!r} has no trained weights; do not pass --weights for it")
    model = build_model(name, **options)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as error:
            raise CheckpointError(f"weights {str(weights)!r} do not fit model {name!r}: {one_line(error)}") from error
    model = model.to(target).eval()
    if pool_window == "auto":
        pool_window = round(POOL_WINDOW_PER_PATCH * patch_size) if isinstance(patch_size, int) else DEFAULT_POOL_WINDOW
    set_pool_window(model, pool_window)
    return model


def _pooling_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if hasattr(module, "pool_window")]


def set_pool_window(model: nn.Module, window: int | None, *, border: str = "shift") -> dict[str, int | None]:
    """Set TLC local statistics: every module with a ``pool_window`` attribute averages a local window.

    ``window`` is in input pixels; each module gets it at its own scale (``round(window / s)`` for a
    module whose input is ``s`` times smaller than the image, at least 1). The scales are found by one
    forward pass of a small probe image (4 x ``model.size_multiple`` pixels square) with hooks.

    Args:
        model: e.g. NAFNet or M2AENet (their ``SimplifiedChannelAttention`` and ``MaskPredictor``).
        window: window side in input pixels, or None for the global mean (training behaviour).
        border: see :func:`adeblur.models.blocks.local_mean`.

    Returns:
        Module name -> its window in its own pixels.

    >>> from adeblur.models import build_model
    >>> model = build_model("nafnet-lite", width=4, encoder_blocks=(1, 1), decoder_blocks=(1, 1))
    >>> set_pool_window(model, 64)
    {'encoders.0.0.sca': 64, 'encoders.1.0.sca': 32, 'middle_blks.0.sca': 16, 'decoders.0.0.sca': 32, 'decoders.1.0.sca': 64}
    """
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ConfigError(f"pool window must be a positive number of pixels, got {window!r}")
    if border not in LOCAL_MEAN_BORDERS:
        raise ConfigError(f"pool border must be one of {LOCAL_MEAN_BORDERS}, got {border!r}")
    modules = _pooling_modules(model)
    if window is None:
        for _, module in modules:
            module.pool_window = None
        return {name: None for name, _ in modules}
    if not modules:
        return {}
    probe_size = 4 * getattr(model, "size_multiple", 1)
    heights: dict[str, int] = {}

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            heights.setdefault(name, args[0].shape[-2])

        return hook

    handles = [module.register_forward_pre_hook(recorder(name)) for name, module in modules]
    parameter = next(model.parameters())
    probe = torch.zeros(1, getattr(model, "image_channels", 3), probe_size, probe_size, device=parameter.device)
    try:
        with torch.no_grad(), _eval_mode(model):
            model(probe.to(parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
    windows: dict[str, int | None] = {}
    for name, module in modules:
        if name not in heights:  # not used in the forward pass: leave it global
            windows[name] = module.pool_window = None
            continue
        module.pool_window = max(1, round(window * heights[name] / probe_size))
        module.pool_border = border
        windows[name] = module.pool_window
    return windows


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode within the block, the previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device_dtype(model: nn.Module, fallback: Tensor) -> tuple[torch.device, torch.dtype]:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return fallback.device, torch.float32


# --------------------------------------------------------------------------------------------------
# Memory


_BYTES_PER_PIXEL: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, tuple[int | None, ...]], float]] = weakref.WeakKeyDictionary()


def estimate_bytes_per_pixel(model: nn.Module) -> float:
    """Peak memory of ``model``'s forward pass per input pixel (batch 1), measured once and cached.

    Measured with :func:`adeblur.engine.profile.measure_peak_memory` on the model's device (CPU: peak
    resident memory above the resident memory before the call; CUDA: allocator peak above the memory
    allocated before) on a random 256 x 256 image (rounded up to ``size_multiple``) after a warm-up pass
    at half the size; for a model with a replaceable blur mask (M2AENet), with every pixel blurred, its
    most expensive case. Constant overheads count as per-pixel cost, so the figure errs high. The
    cache is per model object, device and TLC setting.

    >>> from adeblur.models import IdentityModel
    >>> estimate_bytes_per_pixel(IdentityModel()) >= 0
    True
    """
    device, dtype = _model_device_dtype(model, torch.empty(0))
    windows = tuple(getattr(module, "pool_window", None) for _, module in _pooling_modules(model))
    key = (str(device), windows)
    cached = _BYTES_PER_PIXEL.setdefault(model, {})
    if key in cached:
        return cached[key]
    side = _probe_side(model)
    channels = getattr(model, "image_channels", 3)
    generator = torch.Generator().manual_seed(0)
    warmup = torch.rand(1, channels, side // 2, side // 2, generator=generator).to(device, dtype)
    probe = torch.rand(1, channels, side, side, generator=generator).to(device, dtype)
    forced = any(hasattr(module, "forced_blur_mask") for module in model.modules())
    mask_context = force_blur_mask(model, torch.ones(1, 1, side, side, device=device)) if forced else contextlib.nullcontext()
    with torch.no_grad(), _eval_mode(model):
        model(warmup)
    with torch.no_grad(), _eval_mode(model), mask_context:
        baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        peak, _ = measure_peak_memory(lambda: model(probe), device)
    bytes_per_pixel = max(0.0, float(peak - baseline)) / side**2 if peak is not None else 0.0
    cached[key] = bytes_per_pixel
    return bytes_per_pixel


def _probe_side(model: nn.Module) -> int:
    """Side of the square image :func:`estimate_bytes_per_pixel` measures: 256 rounded up to the multiple."""
    multiple = getattr(model, "size_multiple", 1)
    return multiple * math.ceil(256 / multiple)


def default_memory_budget(device: str | torch.device) -> int:
    """Default memory budget of one forward pass: 2 GiB on the CPU, half the free memory on CUDA.

    >>> default_memory_budget("cpu") == 2 * 2**30
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(CUDA_MEMORY_FRACTION * free)
    return CPU_MEMORY_BUDGET


# --------------------------------------------------------------------------------------------------
# Tiles


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of size ``tile`` covering ``[0, length)``, evenly spread.

    The fewest tiles whose consecutive overlaps are all at least ``overlap``; one tile (at 0) when
    ``length <= tile`` (the tile is then the whole axis).

    >>> tile_starts(1024, 512, 64)
    [0, 256, 512]
    >>> tile_starts(300, 512, 64)
    [0]
    """
    if tile <= overlap or overlap < 0:
        raise ConfigError(f"tile overlap must be in [0, tile size {tile}), got {overlap}")
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp_window(length: int, before: int, after: int) -> Tensor:
    """1-D blending weights of a tile of ``length`` sharing ``before`` / ``after`` pixels with neighbours."""
    weights = torch.ones(length, dtype=torch.float32)
    for shared, side in ((before, 1), (after, -1)):
        if shared <= 0:
            continue
        margin = shared // 4
        ramp_length = shared - 2 * margin
        ramp = torch.sin(0.5 * math.pi * (torch.arange(ramp_length, dtype=torch.float64) + 0.5) / ramp_length) ** 2
        side_weights = torch.cat([torch.zeros(margin, dtype=torch.float64), ramp])
        if side == -1:
            side_weights = side_weights.flip(0)
            weights[length - side_weights.numel() :] *= side_weights.float()
        else:
            weights[: side_weights.numel()] *= side_weights.float()
    return weights


def _axis_windows(starts: list[int], tile: int) -> list[Tensor]:
    windows = []
    for i, start in enumerate(starts):
        before = starts[i - 1] + tile - start if i > 0 else 0
        after = start + tile - starts[i + 1] if i + 1 < len(starts) else 0
        windows.append(_ramp_window(tile, before, after))
    return windows


def _tile_size(padded_length: int, tile: int) -> int:
    return min(tile, padded_length)


def seam_ratio(
    tiled: Tensor, reference: Tensor, *, tile: int, overlap: int, size_multiple: int = 1, band: int = 8
) -> float:
    """How visible tile seams are: mean ``|tiled - reference|`` within ``band`` px of tile borders / elsewhere.

    The tile borders are those :func:`restore` uses for ``tile`` and ``overlap`` (on the image padded
    to ``size_multiple``); only borders inside the image count, i.e. each tile's first and last rows and
    columns that are not on the image's edge. 1 means seams are no worse than the rest; the issue asks
    for <= 1.5.

    Args:
        tiled, reference: (C, H, W) or (B, C, H, W), e.g. restored with and without tiles.
        tile, overlap, size_multiple: as passed to :func:`restore` (``model.size_multiple``).
        band: half-width of the band around each border, in pixels.

    >>> reference = torch.zeros(1, 64, 64)
    >>> tiled = reference.clone()
    >>> tiled[:, :, 28:36] = 1.0  # an error right at the border between two tiles of 40 px
    >>> seam_ratio(tiled, reference, tile=40, overlap=16) > 10
    True
    """
    if tiled.shape != reference.shape or tiled.ndim not in (3, 4):
        raise ValueError(f"tiled {tuple(tiled.shape)} and reference {tuple(reference.shape)} must be equal (C, H, W) or (B, C, H, W)")
    height, width = tiled.shape[-2:]
    near = torch.zeros(height, width, dtype=torch.bool)
    for axis, length in ((0, height), (1, width)):
        padded = length + (-length % size_multiple)
        size = _tile_size(padded, tile)
        for start in tile_starts(padded, size, min(overlap, size - 1)):
            for border in (start, start + size):
                if 0 < border < padded:
                    lines = slice(max(border - band, 0), max(min(border + band, length), 0))
                    if axis == 0:
                        near[lines, :] = True
                    else:
                        near[:, lines] = True
    difference = (tiled.double() - reference.double()).abs().mean(dim=tuple(range(tiled.ndim - 2))).cpu()
    if not near.any() or near.all():
        raise ValueError("the image has no tile border inside it, or nothing away from the borders")
    return float(difference[near].mean() / difference[~near].mean().clamp_min(1e-12))


# --------------------------------------------------------------------------------------------------
# Restoring one image


def _pad_reflect(image: Tensor, multiple: int) -> Tensor:
    """Pad (B, C, H, W) on the right and bottom to multiples of ``multiple``, mirroring the image."""
    pad_bottom = -image.shape[-2] % multiple
    pad_right = -image.shape[-1] % multiple
    if pad_bottom == 0 and pad_right == 0:
        return image
    mode = "reflect" if pad_bottom < image.shape[-2] and pad_right < image.shape[-1] else "replicate"
    return F.pad(image, (0, pad_right, 0, pad_bottom), mode=mode)


def _accepts(function: Callable[..., Any], keyword: str) -> bool:
    try:
        return keyword in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _forward(model: nn.Module, image: Tensor, kernel: Tensor | None, return_maps: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward pass: (restored, maps at the image's resolution)."""
    keywords: dict[str, Any] = {}
    if kernel is not None:
        keywords["kernel"] = kernel
    want_aux = return_maps and _accepts(model.forward, "return_aux")
    if want_aux:
        keywords["return_aux"] = True
    output = model(image, **keywords)
    if not want_aux:
        return output, {}
    restored, aux = output
    return restored, _maps_from_aux(model, aux, tuple(image.shape[-2:]))


def _maps_from_aux(model: nn.Module, aux: Mapping[str, Any], size: tuple[int, int]) -> dict[str, Tensor]:
    """The finest guided stage's mask and motion at input resolution, plus ``model.extra_maps(aux)``."""
    maps: dict[str, Tensor] = {}
    stages = [stage for stage in aux.values() if isinstance(stage, Mapping) and "scale" in stage]
    if stages:
        stage = min(stages, key=lambda s: s["scale"])  # the first of the finest, in forward order
        scale = stage["scale"]
        if "blur_mask" in stage:
            maps["blur_mask"] = F.interpolate(stage["blur_mask"], size=size, mode="nearest")
            maps["blur_probability"] = F.interpolate(stage["blur_probability"], size=size, mode="bilinear", align_corners=False)
        for key in ("displacement_start", "displacement_end"):
            if key in stage:  # stage pixels -> input pixels
                maps[key] = scale * F.interpolate(stage[key], size=size, mode="bilinear", align_corners=False)
    extra = getattr(model, "extra_maps", None)
    if callable(extra):
        for name, value in extra(aux).items():
            if tuple(value.shape[-2:]) != size:
                value = F.interpolate(value, size=size, mode="bilinear", align_corners=False)
            maps[name] = value
    return maps


def restore(
    model: nn.Module,
    image: Tensor,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    kernel: Tensor | None = None,
    memory_budget: int | None = None,
    return_maps: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Restore an image of any size with ``model``, whole or in overlapping tiles.

    The image is padded on the right and bottom to multiples of ``model.size_multiple`` by mirroring
    (so the model sees image content, not a black strip) and the result cropped back and clamped to
    [0, 1]. The model runs in eval mode (its previous mode is restored) without gradients, on its own
    device and dtype; the result comes back on the image's device and dtype.

    Tiling: with ``tile`` (rounded down to a multiple of ``model.size_multiple``), or automatically when
    ``estimate_bytes_per_pixel(model) * B * H * W`` exceeds ``memory_budget``, with the largest tile
    that fits it (at least 4 x ``overlap``). Tiles run one at a time; their outputs are blended into
    float32 accumulators on the image's device (see the module docstring). Models that declare
    ``tileable = False`` (kernel-based classical methods) always run whole.

    Args:
        model: a restorer (B, 3, H, W) -> (B, 3, H, W), e.g. from :func:`load_model`.
        image: (3, H, W) or (B, 3, H, W), float in [0, 1].
        tile: tile side in pixels; None: automatic.
        overlap: pixels shared by neighbouring tiles (default :data:`DEFAULT_OVERLAP`, or less for
            small tiles: at most a quarter of the tile).
        kernel: (1, kh, kw) blur kernel for models with ``needs_kernel = True``; ignored by others.
        memory_budget: bytes one forward pass may use; default :func:`default_memory_budget`.
        return_maps: also return the model's maps: for M2AENet ``blur_mask`` (B, 1, H, W) in [0, 1]
            (the mask of the finest guided stage, nearest-upsampled; fractional only where tiles
            blend), ``blur_probability``, ``displacement_start`` and ``displacement_end`` (B, 2, H, W,
            input pixels, bilinearly upsampled), plus ``model.extra_maps(aux)`` where the model defines
            it; ``{}`` for models without maps.
        progress: called as ``progress(done, total)`` with the number of tiles done (0 first).

    Returns:
        The restored image, shaped as ``image``; with ``return_maps``, ``(restored, maps)``, the maps
        batched even for a (3, H, W) image.

    >>> from adeblur.models import build_model
    >>> model = build_model("nafnet-lite", width=4, encoder_blocks=(1, 1), decoder_blocks=(1, 1))
    >>> image = torch.rand(3, 37, 50)
    >>> restore(model, image).shape
    torch.Size([3, 37, 50])
    >>> calls = []
    >>> tiled = restore(model, image, tile=16, overlap=4, progress=lambda done, total: calls.append(total))
    >>> tiled.shape, calls[-1]  # 3 x 4 tiles of 16 px cover the image padded to 40 x 52
    (torch.Size([3, 37, 50]), 12)
    """
    if not isinstance(image, Tensor) or image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"image must be a (3, H, W) or (B, 3, H, W) tensor, got {getattr(image, 'shape', type(image))}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating-point tensor in [0, 1], got {image.dtype}")
    batched = image.ndim == 4
    batch = image if batched else image.unsqueeze(0)
    height, width = batch.shape[-2:]
    multiple = getattr(model, "size_multiple", 1)
    if getattr(model, "needs_kernel", False):
        if kernel is None:
            raise ConfigError(f"model {type(model).__name__} needs a blur kernel (pass --kernel FILE)")
    else:
        kernel = None
    tileable = getattr(model, "tileable", True)
    if tile is not None and not tileable:
        raise ConfigError(f"model {type(model).__name__} cannot be tiled (it restores the whole image with one kernel)")
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
            raise ConfigError(f"tile size must be a positive number of pixels, got {tile!r}")
        tile = max(multiple, tile - tile % multiple)
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0):
        raise ConfigError(f"tile overlap must be a non-negative number of pixels, got {overlap!r}")
    device, dtype = _model_device_dtype(model, batch)
    if kernel is not None:
        kernel = kernel.to(device, dtype)
    padded = _pad_reflect(batch, multiple)
    with torch.no_grad(), _eval_mode(model):
        if tile is None and tileable:
            tile = _automatic_tile(model, padded, overlap, memory_budget, device)
        if tile is None or (tile >= padded.shape[-2] and tile >= padded.shape[-1]):
            if progress is not None:
                progress(0, 1)
            restored, maps = _forward(model, padded.to(device, dtype), kernel, return_maps)
            restored = restored.to(batch.device, torch.float32)
            maps = {name: value.to(batch.device, torch.float32) for name, value in maps.items()}
            if progress is not None:
                progress(1, 1)
        else:
            restored, maps = _restore_tiled(model, padded, tile, overlap, return_maps, progress, device, dtype)
    restored = restored[..., :height, :width].clamp(0, 1).to(batch.dtype)
    restored = restored if batched else restored.squeeze(0)
    if not return_maps:
        return restored
    return restored, {name: value[..., :height, :width].to(batch.dtype) for name, value in maps.items()}


def _automatic_tile(
    model: nn.Module, padded: Tensor, overlap: int | None, memory_budget: int | None, device: torch.device
) -> int | None:
    """The tile side that keeps one forward pass within the budget, or None when the image fits."""
    if memory_budget is None and padded.shape[0] * padded.shape[-2] * padded.shape[-1] <= _probe_side(model) ** 2:
        return None  # no bigger than the probe the estimate runs: fits any default budget, no need to measure
    budget = default_memory_budget(device) if memory_budget is None else memory_budget
    per_pixel = estimate_bytes_per_pixel(model) * padded.shape[0]
    if per_pixel * padded.shape[-2] * padded.shape[-1] <= budget:
        return None
    multiple = getattr(model, "size_multiple", 1)
    side = int(math.sqrt(budget / max(per_pixel, 1e-9)))
    smallest = 4 * (DEFAULT_OVERLAP if overlap is None else overlap)
    side = max(side, smallest, multiple)
    return max(multiple, side - side % multiple)


def _restore_tiled(
    model: nn.Module,
    padded: Tensor,
    tile: int,
    overlap: int | None,
    return_maps: bool,
    progress: Callable[[int, int], None] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, dict[str, Tensor]]:
    tile_height = _tile_size(padded.shape[-2], tile)
    tile_width = _tile_size(padded.shape[-1], tile)
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, min(tile_height, tile_width) // 4)
    overlap_y = min(overlap, tile_height - 1)  # an axis covered by one tile needs none
    overlap_x = min(overlap, tile_width - 1)
    if overlap >= tile and (padded.shape[-2] > tile or padded.shape[-1] > tile):
        raise ConfigError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    starts_y = tile_starts(padded.shape[-2], tile_height, overlap_y)
    starts_x = tile_starts(padded.shape[-1], tile_width, overlap_x)
    windows_y = _axis_windows(starts_y, tile_height)
    windows_x = _axis_windows(starts_x, tile_width)
    home = padded.device
    accumulated = torch.zeros(padded.shape, dtype=torch.float32, device=home)
    total_weight = torch.zeros(padded.shape[-2:], dtype=torch.float32, device=home)
    map_sums: dict[str, Tensor] = {}
    count = len(starts_y) * len(starts_x)
    if progress is not None:
        progress(0, count)
    done = 0
    for y, window_y in zip(starts_y, windows_y):
        for x, window_x in zip(starts_x, windows_x):
            rows, cols = slice(y, y + tile_height), slice(x, x + tile_width)
            restored, maps = _forward(model, padded[..., rows, cols].to(device, dtype), None, return_maps)
            weight = (window_y[:, None] * window_x[None, :]).to(home)
            accumulated[..., rows, cols] += restored.to(home, torch.float32) * weight
            total_weight[rows, cols] += weight
            for name, value in maps.items():
                if name not in map_sums:
                    map_sums[name] = torch.zeros(*value.shape[:-2], *padded.shape[-2:], dtype=torch.float32, device=home)
                map_sums[name][..., rows, cols] += value.to(home, torch.float32) * weight
            done += 1
            if progress is not None:
                progress(done, count)
    restored = accumulated.div_(total_weight)
    return restored, {name: value.div_(total_weight) for name, value in map_sums.items()}


# --------------------------------------------------------------------------------------------------
# Files


@dataclass
class DeblurResult:
    """What :func:`deblur_files` did with one input.

    Attributes:
        input: the input file (or the pattern or folder that matched nothing).
        output: the deblurred image written, or None on failure.
        extras: visualisations written, by kind (``"mask"``, ``"motion"``, ``"arrows"``, map names).
        error: why the input failed (None on success); the message names the file.
        seconds: time spent on this input (reading, restoring, writing).
    """

    input: Path
    output: Path | None = None
    extras: dict[str, Path] = field(default_factory=dict)
    error: AdeblurError | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def collect_inputs(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[DeblurResult]]:
    """Expand files, folders (their images, not recursive) and glob patterns into image files.

    Returns:
        ``(files, failures)``: the files in the order given (folders and patterns sorted by name),
        each once; one failed :class:`DeblurResult` per input that names nothing (missing path, folder
        without images, pattern without image matches).

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> for name in ("b.png", "a.jpg", "notes.txt"):
    ...     _ = (Path(folder.name) / name).write_bytes(b"")
    >>> files, failures = collect_inputs([folder.name, folder.name + "/*.png", folder.name + "/missing.png"])
    >>> [path.name for path in files], [str(failure.error) for failure in failures]  # doctest: +ELLIPSIS
    (['a.jpg', 'b.png'], ["no such file or folder: '.../missing.png'"])
    >>> folder.cleanup()
    """
    files: list[Path] = []
    failures: list[DeblurResult] = []
    seen: set[Path] = set()
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found = list_images(path)
            reason = f"no images in folder {text!r}"
        elif path.is_file():
            found = [path]
        elif any(character in text for character in "*?["):
            found = sorted(Path(p) for p in glob.glob(text) if is_image_path(p) and Path(p).is_file())
            reason = f"no image file matches {text!r}"
        else:
            found = []
            reason = f"no such file or folder: {text!r}"
        if not found:
            failures.append(DeblurResult(path, error=ImageError(reason)))
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files, failures


def _output_paths(inputs: list[str], files: list[Path], output: str | os.PathLike[str] | None) -> list[Path]:
    """Where each file's deblurred image goes (see :func:`deblur_files`)."""
    if output is None:
        return [file.with_name(f"{file.stem}_deblurred{file.suffix}") for file in files]
    target = Path(output)
    single_file = len(inputs) == 1 and Path(inputs[0]).is_file()
    if is_image_path(target) and not target.is_dir():
        if not single_file:
            raise ConfigError(f"output {str(target)!r} names one image, but the inputs are several images or a folder; pass a folder")
        return [target]
    if target.exists() and not target.is_dir():
        raise ConfigError(f"output {str(target)!r} exists and is not a folder")
    return [target / f"{file.stem}_deblurred{file.suffix}" for file in files]


def _available_maps(model: nn.Module) -> set[str]:
    """Names of the maps :func:`restore` gives for ``model`` (from a tiny probe image)."""
    if getattr(model, "needs_kernel", False):
        return set()
    side = 2 * getattr(model, "size_multiple", 1)
    device, dtype = _model_device_dtype(model, torch.empty(0))
    with torch.no_grad(), _eval_mode(model):
        _, maps = _forward(model, torch.full((1, 3, side, side), 0.5, device=device, dtype=dtype), None, True)
    return set(maps)


def deblur_files(
    inputs: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str] | None = None,
    *,
    model: nn.Module | str | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    memory_budget: int | None = None,
    kernel: Tensor | None = None,
    save_mask: bool = False,
    save_motion: bool = False,
    save_maps: bool = False,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> Iterator[DeblurResult]:
    """Deblur image files, folders and globs; yield one :class:`DeblurResult` per input file.

    Output naming: without ``output``, ``<stem>_deblurred.<ext>`` beside each input. ``output`` is one
    file when a single input file is given and ``output`` has an image extension (its extension picks
    the format); otherwise a folder (created) that receives ``<stem>_deblurred.<ext>`` files. The
    visualisations go beside the deblurred image: ``<stem>_mask.png`` (``save_mask``: the blur mask over
    the input), ``<stem>_motion.png`` and ``<stem>_arrows.png`` (``save_motion``: the motion field as a
    colour wheel and as arrows to the start and end positions), ``<stem>_<map>.png`` (``save_maps``: each
    model-specific map), ``<stem>`` being the input's.

    Grey stays grey, an alpha channel is passed through unchanged, 16-bit PNG/TIFF stay 16-bit. An input
    is never overwritten (nor any other input of the run). A file that cannot be read, restored or
    written yields a result with ``error`` set and leaves no output of its own behind (each file is
    written atomically; the files already written for that input are removed); the others go on.

    Args:
        inputs: image files, folders (their images, not recursive) and glob patterns.
        output: see above.
        model: a model (e.g. from :func:`load_model`), or a registered name / None to load one with
            ``weights`` on ``device``.
        tile, overlap, memory_budget, kernel: as for :func:`restore`.
        save_mask, save_motion, save_maps: also write those visualisations (see above).
        progress: called as ``progress(image_index, image_count, tiles_done, tiles_total)`` while an
            image is restored (``image_index`` counts from 0).

    Raises:
        ConfigError: ``output`` names one image but there are several inputs; the model does not
            predict a map asked for. Raised when iteration starts, before any file is written.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = write_image(Path(folder.name) / "grey.png", torch.rand(1, 20, 30))
    >>> [(r.output.name, r.ok) for r in deblur_files([path], model="identity", device="cpu")]
    [('grey_deblurred.png', True)]
    >>> folder.cleanup()
    """
    inputs = [os.fspath(item) for item in inputs]
    if not isinstance(model, nn.Module):
        model = load_model(model, weights, device)
    elif weights is not None:
        raise ConfigError("pass weights either loaded into the model or as `weights`, not both")
    files, failures = collect_inputs(inputs)
    outputs = _output_paths(inputs, files, output)
    wanted = {"mask": save_mask, "motion": save_motion}
    if save_mask or save_motion or save_maps:
        available = _available_maps(model)
        needed = {"mask": "blur_mask", "motion": "displacement_start"}
        missing = [f"--save-{kind}" for kind, on in wanted.items() if on and needed[kind] not in available]
        if save_maps and not available - set(MAP_NAMES):
            missing.append("--save-maps")
        if missing:
            raise ConfigError(f"model {type(model).__name__} predicts no maps for {', '.join(missing)}")
    yield from failures
    claimed: dict[Path, Path] = {}
    for index, (file, target) in enumerate(zip(files, outputs)):
        start = time.perf_counter()
        key = target.resolve()
        if key in claimed:
            error = ImageError(f"cannot write {str(target)!r} for {str(file)!r}: {str(claimed[key])!r} already goes there")
            yield DeblurResult(file, error=error)
            continue
        claimed[key] = file

        def tiles(done: int, total: int, index: int = index) -> None:
            if progress is not None:
                progress(index, len(files), done, total)

        try:
            written = _deblur_one(
                file, target, model, protect=files, tile=tile, overlap=overlap, memory_budget=memory_budget,
                kernel=kernel, save_mask=save_mask, save_motion=save_motion, save_maps=save_maps, progress=tiles,
            )  # fmt: skip
        except AdeblurError as error:
            yield DeblurResult(file, error=error, seconds=time.perf_counter() - start)
            continue
        main_output = written.pop("image")
        yield DeblurResult(file, main_output, written, seconds=time.perf_counter() - start)


def _deblur_one(
    file: Path,
    target: Path,
    model: nn.Module,
    *,
    protect: list[Path],
    tile: int | None,
    overlap: int | None,
    memory_budget: int | None,
    kernel: Tensor | None,
    save_mask: bool,
    save_motion: bool,
    save_maps: bool,
    progress: Callable[[int, int], None],
) -> dict[str, Path]:
    """Read, restore and write one file; return what was written ({"image": path, kind: path...})."""
    image, info = read_image(file)
    rgb, layout = to_rgb(image)
    want_maps = save_mask or save_motion or save_maps
    result = restore(
        model, rgb, tile=tile, overlap=overlap, kernel=kernel, memory_budget=memory_budget, return_maps=want_maps,
        progress=progress,
    )  # fmt: skip
    restored, maps = result if want_maps else (result, {})
    pictures: dict[str, tuple[Path, Tensor]] = {}
    if want_maps:
        from adeblur.viz import visualise_maps

        rendered = visualise_maps(rgb, {name: value[0] for name, value in maps.items()})
        kinds = (["mask"] if save_mask else []) + (["motion", "arrows"] if save_motion else [])
        kinds += [name for name in maps if save_maps and name not in MAP_NAMES]
        for kind in kinds:
            pictures[kind] = (target.with_name(f"{file.stem}_{kind}.png"), rendered[kind])
    written: dict[str, Path] = {}
    try:
        written["image"] = write_image(target, from_rgb(restored, layout), info, protect=protect)
        for kind, (path, picture) in pictures.items():
            written[kind] = write_image(path, picture, protect=protect)
    except AdeblurError:
        for path in written.values():
            path.unlink(missing_ok=True)
        raise
    return written
