"""The Python API, mirroring the command line: :func:`load`, :func:`deblur`, :func:`evaluate`.

>>> import numpy as np
>>> from adeblur import api
>>> model = api.load("identity", device="cpu")  # trained models: api.load(weights="run/best.safetensors")
>>> photo = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
>>> sharp = api.deblur(photo, model)
>>> sharp.shape, sharp.dtype
((24, 32, 3), dtype('uint8'))

:func:`deblur` takes what you have and returns the same kind: an image file path (the deblurred file is
written, its path returned), a PIL image, a NumPy array or a torch tensor. See ``docs/deblur.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from adeblur.engine.infer import deblur_files, load_model, restore
from adeblur.errors import ConfigError, ImageError
from adeblur.io import from_rgb, to_rgb

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["deblur", "evaluate", "load"]

# PIL modes deblur works in directly.
_PIL_MODES = ("L", "LA", "RGB", "RGBA", "I;16", "I", "F")
# Modes converted to a mode above and back afterwards (palettes stay RGB / RGBA, see deblur).
_PIL_VIA = {"1": "L", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "P": None, "PA": "RGBA"}


def load(name: str | None = None, weights: str | os.PathLike[str] | None = None, device: str = "auto") -> nn.Module:
    """A model ready to deblur: :func:`adeblur.engine.infer.load_model` (same arguments and errors).

    ``name`` None: the model recorded in ``weights``, else ``m2aenet-lite``; ``weights`` None: the shipped
    weights (an error names what to pass while none ship); ``device`` ``"auto"``: CUDA when available.

    >>> load("identity", device="cpu").training
    False
    """
    return load_model(name, weights, device)


def deblur(
    x: Any,
    model: nn.Module | str | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    memory_budget: int | None = None,
    kernel: Tensor | None = None,
    save_mask: bool = False,
    save_motion: bool = False,
    save_maps: bool = False,
) -> Any:
    """Deblur ``x`` and return the result in the same form.

    * a path (``str`` / ``os.PathLike``) to an image file: writes ``<stem>_deblurred.<ext>`` beside it, or
      to ``output`` (a file, or a folder), keeping channels and bit depth (as ``adeblur deblur``), and
      returns the path written; ``save_mask`` / ``save_motion`` / ``save_maps`` also write those pictures.
      A folder or glob pattern: the list of paths written (all files are tried; then the first
      failure, if any, is raised).
    * a PIL image: a PIL image of the same mode and size (``L``, ``LA``, ``RGB``, ``RGBA``, 16-bit
      ``I;16`` / ``I``, float ``F`` in [0, 1]; ``1``, ``CMYK``, ``YCbCr``... are converted back; palette
      images ``P`` / ``PA`` come back as ``RGB`` / ``RGBA``).
    * a NumPy array (H, W) or (H, W, C), C in 1..4: the same shape and dtype; uint8 and uint16 use their
      full range, floating point is [0, 1]. The last channel of C = 2 or 4 is alpha (kept unchanged).
    * a tensor (C, H, W) or (B, C, H, W), float in [0, 1], C in 1..4: the same shape, dtype and device.

    Grey images are deblurred as RGB and returned as grey (BT.601 luma of the result).

    Args:
        x: the image, see above.
        model: a model (from :func:`load`), a registered name, or None (the default model, with
            ``weights`` on ``device``).
        output, save_mask, save_motion, save_maps: for a path only.
        tile, overlap, memory_budget, kernel: see :func:`adeblur.engine.infer.restore`.

    Raises:
        ImageError: an unreadable or unwritable file (for a path).
        TypeError: an input kind or dtype deblur does not take.

    >>> import torch
    >>> model = load("identity", device="cpu")
    >>> deblur(torch.full((1, 4, 4), 0.25), model).shape
    torch.Size([1, 4, 4])
    """
    if not isinstance(model, nn.Module):
        model = load_model(model, weights, device)
    elif weights is not None:
        raise ConfigError("pass weights either loaded into the model or as `weights`, not both")
    options = {"tile": tile, "overlap": overlap, "memory_budget": memory_budget, "kernel": kernel}
    if isinstance(x, (str, os.PathLike)):
        results = list(deblur_files(
            [x], output, model=model, save_mask=save_mask, save_motion=save_motion, save_maps=save_maps, **options
        ))  # fmt: skip
        for result in results:
            if result.error is not None:
                raise result.error
        outputs = [result.output for result in results]
        return outputs[0] if Path(x).is_file() else outputs
    if output is not None or save_mask or save_motion or save_maps:
        raise TypeError("output, save_mask, save_motion and save_maps apply to image files (pass a path)")
    if isinstance(x, Tensor):
        return _deblur_tensor(x, model, options)
    if isinstance(x, np.ndarray):
        return _deblur_array(x, model, options)
    from PIL import Image

    if isinstance(x, Image.Image):
        return _deblur_pil(x, model, options)
    raise TypeError(f"deblur takes a path, a PIL image, a NumPy array or a tensor, not {type(x).__name__}")


def _deblur_tensor(image: Tensor, model: nn.Module, options: dict[str, Any]) -> Tensor:
    if not image.is_floating_point():
        raise TypeError(f"a tensor to deblur must be floating point in [0, 1], got {image.dtype}")
    rgb, layout = to_rgb(image)
    return from_rgb(restore(model, rgb, **options), layout).clamp(0, 1)


def _deblur_array(array: np.ndarray, model: nn.Module, options: dict[str, Any]) -> np.ndarray:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4)):
        raise TypeError(f"an array to deblur must be (H, W) or (H, W, C) with C in 1..4, got shape {array.shape}")
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        levels = float(np.iinfo(array.dtype).max)
    elif np.issubdtype(array.dtype, np.floating):
        levels = 1.0
    else:
        raise TypeError(f"an array to deblur must be uint8, uint16 or floating point, got {array.dtype}")
    image = torch.from_numpy(np.asarray(array, dtype=np.float32) / levels)
    image = image.unsqueeze(0) if array.ndim == 2 else image.permute(2, 0, 1)
    restored = _deblur_tensor(image, model, options)
    restored = restored[0] if array.ndim == 2 else restored.permute(1, 2, 0)
    if levels == 1.0:
        return restored.numpy().astype(array.dtype)
    return np.rint(restored.double().numpy() * levels).astype(array.dtype)


def _deblur_pil(picture: Image.Image, model: nn.Module, options: dict[str, Any]) -> Image.Image:
    from PIL import Image

    mode = picture.mode
    if mode not in _PIL_MODES and mode not in _PIL_VIA:
        raise ImageError(f"PIL images of mode {mode!r} cannot be deblurred; convert to RGB first")
    working = picture
    if mode in _PIL_VIA:
        target = _PIL_VIA[mode] or ("RGBA" if "transparency" in picture.info else "RGB")
        working = picture.convert(target)
    pixels = np.asarray(working)
    if working.mode == "I":  # 32-bit integer pixels: 16-bit data (as Pillow opens 16-bit PNG)
        pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
    restored = _deblur_array(pixels, model, options)
    # Pillow picks the mode from the dtype and channels: uint8 L/LA/RGB/RGBA, uint16 I;16, int32 I, float32 F.
    result = Image.fromarray(restored.astype(np.int32) if working.mode == "I" else restored)
    if mode in _PIL_VIA and _PIL_VIA[mode] is not None:
        result = result.convert(mode, dither=Image.Dither.NONE) if mode == "1" else result.convert(mode)
    return result


def evaluate(
    data: str | os.PathLike[str],
    layout: str = "paired",
    model: nn.Module | str | None = None,
    weights: str | os.PathLike[str] | None = None,
    *,
    device: str = "auto",
    kernel: str | os.PathLike[str] | Tensor | None = None,
    split: str | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
) -> dict[str, Any]:
    """Score a model on a dataset folder: ``{"summary": {...}, "images": [...]}`` as ``adeblur evaluate --json``.

    Delegates to :func:`adeblur.engine.evaluate.evaluate_folder` (same arguments): ``layout`` one of
    ``paired``, ``gopro``, ``hide``, ``realblur``, ``reloblur``; ``model`` ``"identity"`` scores the blurred
    input itself; ``kernel`` a kernel file or tensor for the kernel-based classical models.

    >>> import tempfile
    >>> from adeblur.data.generate import write_synthetic_dataset
    >>> folder = tempfile.TemporaryDirectory()
    >>> _ = list(write_synthetic_dataset(folder.name, kind="local", count=2, size=(32, 32)))
    >>> scores = evaluate(folder.name, model="identity", device="cpu")
    >>> scores["summary"]["count"], scores["summary"]["psnr"] == scores["summary"]["input_psnr"]
    (2, True)
    >>> folder.cleanup()
    """
    from adeblur.engine.evaluate import evaluate_folder

    return evaluate_folder(
        data, layout, model, weights, device=device, kernel=kernel, split=split, save_dir=save_dir, tile=tile,
        overlap=overlap,
    )  # fmt: skip

