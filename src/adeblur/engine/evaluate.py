"""Score a restorer on a paired dataset: PSNR, SSIM, their blur-mask-weighted variants, the input's own scores,
and the time per image (what ``adeblur evaluate`` runs; the JSON is DESIGN.md's "Command-line contract").

:func:`evaluate` takes a model and a dataset; :func:`evaluate_folder` opens both from a folder and a model
name or weights file. Both return ``{"summary": {...}, "images": [...]}``:

- ``images``: one row per image, keys :data:`ROW_KEYS`: ``name``; ``psnr``, ``ssim``, ``psnr_w``, ``ssim_w``
  of the restored image; ``input_psnr`` ... ``input_ssim_w`` of the blurred input itself; ``seconds`` (the
  model alone: :func:`adeblur.engine.infer.restore`, padding and tiling included, synchronised on CUDA)
  and ``seconds_io`` (reading the sample + ``seconds`` + writing the result when ``save_dir`` is given).
- ``summary``, keys :data:`SUMMARY_KEYS`: the mean of every score over the images, ``count``,
  ``seconds_per_image`` and ``seconds_per_image_io`` (the means of ``seconds`` and ``seconds_io``).

Conventions (``docs/evaluate.md``):

* The restored image is clamped to ``[0, 1]`` and scored as float (not rounded to 8 bits), in RGB (grey
  datasets are read as three equal channels), by :mod:`adeblur.metrics`: SSIM with the 11x11 Gaussian
  window, weighted scores over the binarised blur mask as the ReLoBlur evaluation.
* Weighted keys are ``None`` (JSON ``null``) for an image without a mask, or whose mask marks no pixel
  (no pixel inside SSIM's 5-pixel border, for ``ssim_w``); summary means skip those images, and are
  ``None`` when no image has a value.
* A restored image identical to its target has PSNR ``inf`` (Python's ``json`` writes ``Infinity``).
* Timing: the first image includes any one-off warm-up of the model (nothing is run untimed first).
* The kernel-based models (``needs_kernel = True``: ``wiener``, ``richardson-lucy``) get the ``kernel``
  argument when given (one kernel for every image), else each sample's own kernel (the paired layout's
  ``kernel/`` folder); an image without either is a :class:`~adeblur.errors.KernelError` before anything
  runs. Other models never see a kernel.
* ``save_dir``: the restored image of sample ``name`` goes to ``save_dir/<name><ext of its blurred file>``
  (names with ``/`` make sub-folders), in the blurred file's channel layout, bit depth and ICC profile
  (grey as BT.601 luma, alpha passed through), written atomically; no input file is ever overwritten.
* Any unreadable sample stops the run with its error: scores over a silently shrunk dataset would mislead.

>>> import tempfile
>>> from adeblur.data.generate import write_synthetic_dataset
>>> from adeblur.models import build_model
>>> folder = tempfile.TemporaryDirectory()
>>> _ = list(write_synthetic_dataset(folder.name, kind="local", count=2, size=(32, 32)))
>>> results = evaluate(build_model("identity"), open_dataset(folder.name), device="cpu")
>>> results["summary"]["count"], results["summary"]["psnr"] == results["summary"]["input_psnr"]
(2, True)
>>> folder.cleanup()
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from adeblur.data.datasets import LAYOUTS, open_dataset
from adeblur.data.synth import load_kernel
from adeblur.engine.infer import load_model, restore
from adeblur.engine.profile import resolve_device, synchronize
from adeblur.errors import ConfigError, DatasetError, KernelError, MetricError
from adeblur.io import from_rgb, read_image, to_rgb, write_image, write_text
from adeblur.metrics import SSIM_WINDOW_SIZE, psnr, ssim

__all__ = ["ROW_KEYS", "SUMMARY_KEYS", "evaluate", "evaluate_folder", "write_csv"]

ROW_KEYS = (
    "name", "psnr", "ssim", "psnr_w", "ssim_w", "input_psnr", "input_ssim", "input_psnr_w", "input_ssim_w",
    "seconds", "seconds_io",
)  # fmt: skip
"""Keys of each per-image row, in order (also the CSV header)."""
SUMMARY_KEYS = (
    "psnr", "ssim", "psnr_w", "ssim_w", "input_psnr", "input_ssim", "input_psnr_w", "input_ssim_w",
    "seconds_per_image", "seconds_per_image_io", "count",
)  # fmt: skip
"""Keys of the summary, in order."""

_SCORE_KEYS = ROW_KEYS[1:9]
_SSIM_BORDER = SSIM_WINDOW_SIZE // 2
_SPLIT_LAYOUTS = ("gopro", "hide", "realblur", "reloblur")

Progress = Callable[[int, int, dict[str, Any]], None]


def evaluate(
    model: nn.Module,
    dataset: Sequence[Mapping[str, Any]],
    *,
    device: str | torch.device = "auto",
    kernel: Tensor | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    memory_budget: int | None = None,
) -> dict[str, Any]:
    """Restore and score every sample of ``dataset``; ``{"summary": {...}, "images": [...]}`` (module docstring).

    Args:
        model: a restorer (``nn.Module``); moved to ``device`` and put in eval mode.
        dataset: indexable samples with ``blur``, ``sharp`` (``(C, H, W)`` in [0, 1], C in 1..4), ``name``,
            optional ``mask`` (``(1, H, W)``) and ``kernel`` (``(1, Kh, Kw)``), as
            :func:`adeblur.data.datasets.open_dataset` gives. With a ``pairs`` attribute (the dataset
            readers) the input files are protected from ``save_dir`` writes and saved images follow the
            blurred file's format; otherwise they are written as RGB PNG.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (:func:`adeblur.engine.profile.resolve_device`).
        kernel: ``(Kh, Kw)`` or ``(1, Kh, Kw)``, used for every image by kernel-based models instead of the
            samples' own kernels.
        save_dir: folder for the restored images (created).
        progress: called after each image as ``progress(done, total, row)``.
        tile, overlap, memory_budget: passed to :func:`adeblur.engine.infer.restore` (``None``: its
            automatic choices).

    Raises:
        KernelError: a kernel-based model and an image with no kernel.
        MetricError: an image SSIM cannot score (smaller than 11x11), naming it.
        AdeblurError: whatever reading or writing a sample raises (ImageError, DatasetError...).
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    needs_kernel = bool(getattr(model, "needs_kernel", False))
    shared_kernel = None if kernel is None else _as_kernel(kernel, "kernel")
    if needs_kernel and shared_kernel is None:
        _check_kernels_present(model, dataset)
    pairs = getattr(dataset, "pairs", None)
    protect = [] if pairs is None else [path for files in pairs for path in _input_paths(files)]
    save_root = None if save_dir is None else Path(save_dir)
    rows: list[dict[str, Any]] = []
    total = len(dataset)
    with torch.inference_mode():
        for index in range(total):
            started = time.perf_counter()
            sample = dataset[index]
            name = str(sample["name"])
            blur = to_rgb(sample["blur"])[0].unsqueeze(0).to(device)
            sharp = to_rgb(sample["sharp"])[0].unsqueeze(0).to(device)
            mask = sample.get("mask")
            mask = None if mask is None else mask.unsqueeze(0).to(device)
            image_kernel = None
            if needs_kernel:
                image_kernel = shared_kernel if shared_kernel is not None else sample.get("kernel")
                if image_kernel is None:
                    raise KernelError(f"image {name!r} has no blur kernel; {_kernel_hint(model)}")
                image_kernel = _as_kernel(image_kernel, f"kernel of image {name!r}").to(device)
            synchronize(device)
            read_seconds = time.perf_counter() - started

            started = time.perf_counter()
            restored = restore(
                model, blur, tile=tile, overlap=overlap, kernel=image_kernel, memory_budget=memory_budget
            )
            synchronize(device)
            seconds = time.perf_counter() - started
            restored = restored.clamp(0, 1)

            write_seconds = 0.0
            if save_root is not None:
                started = time.perf_counter()
                _save(restored[0], name, None if pairs is None else pairs[index], save_root, protect)
                write_seconds = time.perf_counter() - started

            row: dict[str, Any] = {"name": name}
            row.update(_scores(restored, sharp, mask, name, ""))
            row.update(_scores(blur, sharp, mask, name, "input_"))
            row["seconds"] = seconds
            row["seconds_io"] = read_seconds + seconds + write_seconds
            rows.append({key: row[key] for key in ROW_KEYS})
            if progress is not None:
                progress(index + 1, total, rows[-1])
    return {"summary": _summary(rows), "images": rows}


def evaluate_folder(
    data: str | os.PathLike[str],
    layout: str = "paired",
    model: str | nn.Module | None = None,
    weights: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "auto",
    kernel: str | os.PathLike[str] | Tensor | None = None,
    split: str | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    memory_budget: int | None = None,
    pool_window: int | str | None = "auto",
) -> dict[str, Any]:
    """Open the dataset at ``data`` and the model, then :func:`evaluate` (the Python side of ``adeblur evaluate``).

    Args:
        data: dataset root folder.
        layout: one of :data:`adeblur.data.datasets.LAYOUTS`.
        model: a registered name, or a model instance (then ``weights`` must be None); ``None`` with
            :func:`adeblur.engine.infer.load_model`'s default (``m2aenet-lite``, or the name in ``weights``).
        weights: weights file or checkpoint for :func:`adeblur.engine.infer.load_model`.
        kernel: a kernel file (any format of :func:`adeblur.data.synth.load_kernel`) or tensor used for
            every image by kernel-based models; the ``kernel/`` folder is then not read.
        split: ``"train"`` or ``"test"`` for the benchmark layouts (default ``"test"``); the paired layout
            has none.
        pool_window: TLC window of :func:`adeblur.engine.infer.load_model` (when ``model`` is not an instance).
        device, save_dir, progress, tile, overlap, memory_budget: as :func:`evaluate`.

    Raises:
        DatasetError: unknown layout, ``split`` with the paired layout, or a dataset that does not match
            its layout. ConfigError: a model instance and ``weights``. Plus whatever :func:`evaluate` and
            ``load_model`` raise.
    """
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if isinstance(model, nn.Module):
        if weights is not None:
            raise ConfigError("pass weights either loaded into the model or as `weights`, not both")
        restorer = model
    else:
        restorer = load_model(model, weights, device=device, pool_window=pool_window)
    shared_kernel = None
    if kernel is not None:
        shared_kernel = kernel if isinstance(kernel, Tensor) else load_kernel(kernel).unsqueeze(0)
    options: dict[str, Any] = {}
    if layout in _SPLIT_LAYOUTS:
        options["split"] = "test" if split is None else split
    elif split is not None:
        raise DatasetError(f"the {layout} layout has no splits (got split={split!r})")
    if layout == "paired":
        # Networks never read kernels, and --kernel replaces the folder: a broken kernel/ must not stop them.
        options["with_kernels"] = bool(getattr(restorer, "needs_kernel", False)) and shared_kernel is None
    dataset = open_dataset(data, layout, **options)
    return evaluate(
        restorer, dataset, device=device, kernel=shared_kernel, save_dir=save_dir, progress=progress, tile=tile,
        overlap=overlap, memory_budget=memory_budget,
    )  # fmt: skip


def write_csv(rows: Sequence[Mapping[str, Any]], target: str | os.PathLike[str] | TextIO) -> None:
    """Write per-image rows as CSV: a header of the first row's keys, one line per row.

    ``None`` is an empty cell, floats are written with ``repr`` precision (they read back exactly). ``target``
    is a path (written atomically: a temporary file renamed into place), ``"-"`` for standard output, or an
    open text stream.

    Raises:
        AdeblurError: the file cannot be written (names it); nothing is left half-written.

    >>> write_csv([{"name": "a", "psnr": 30.5, "psnr_w": None}], sys.stdout)
    name,psnr,psnr_w
    a,30.5,
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = list(rows[0].keys()) if rows else list(ROW_KEYS)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row[key] is None else row[key] for key in header])
    text = buffer.getvalue()
    if isinstance(target, (str, os.PathLike)) and os.fspath(target) == "-":
        target = sys.stdout
    if not isinstance(target, (str, os.PathLike)):
        target.write(text)
        return
    write_text(target, text, what="CSV")


# --- helpers -------------------------------------------------------------------------------------


def _kernel_hint(model: nn.Module) -> str:
    return f"{type(model).__name__} needs one: add a kernel/ folder (paired layout) or pass --kernel FILE"


def _as_kernel(kernel: Tensor, what: str) -> Tensor:
    """A kernel as ``(1, Kh, Kw)`` float32."""
    if not isinstance(kernel, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(kernel).__name__}")
    if kernel.ndim == 2:
        kernel = kernel.unsqueeze(0)
    if kernel.ndim != 3 or kernel.shape[0] != 1:
        raise KernelError(f"{what} must be (Kh, Kw) or (1, Kh, Kw), got shape {tuple(kernel.shape)}")
    return kernel.to(torch.float32)


def _check_kernels_present(model: nn.Module, dataset: Sequence[Mapping[str, Any]]) -> None:
    """Fail before any work when the dataset's files say some image has no kernel."""
    pairs = getattr(dataset, "pairs", None)
    if pairs is None:
        return  # checked per sample
    missing = [files.name for files in pairs if files.kernel is None]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise KernelError(f"image {missing[0]!r}{more} has no blur kernel; {_kernel_hint(model)}")


def _input_paths(files: Any) -> list[Path]:
    return [path for path in (files.blur, files.sharp, files.mask, files.kernel) if path is not None]


def _scores(prediction: Tensor, target: Tensor, mask: Tensor | None, name: str, prefix: str) -> dict[str, Any]:
    """PSNR and SSIM of one ``(1, 3, H, W)`` image, weighted ones where the mask allows (else None)."""
    try:
        scores = {f"{prefix}psnr": psnr(prediction, target).item(), f"{prefix}ssim": ssim(prediction, target).item()}
        weighted_psnr = weighted_ssim = None
        if mask is not None and bool((mask > 0).any()):
            weighted_psnr = psnr(prediction, target, mask=mask).item()
            height, width = mask.shape[-2:]
            interior = mask[..., _SSIM_BORDER : height - _SSIM_BORDER, _SSIM_BORDER : width - _SSIM_BORDER]
            if bool((interior > 0).any()):
                weighted_ssim = ssim(prediction, target, mask=mask).item()
    except MetricError as error:
        raise MetricError(f"image {name!r}: {error}") from error
    scores[f"{prefix}psnr_w"] = weighted_psnr
    scores[f"{prefix}ssim_w"] = weighted_ssim
    return scores


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return math.fsum(present) / len(present) if present else None


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {key: _mean([row[key] for row in rows]) for key in _SCORE_KEYS}
    summary["seconds_per_image"] = _mean([row["seconds"] for row in rows])
    summary["seconds_per_image_io"] = _mean([row["seconds_io"] for row in rows])
    summary["count"] = len(rows)
    return {key: summary[key] for key in SUMMARY_KEYS}


def _save(restored: Tensor, name: str, files: Any, save_root: Path, protect: list[Path]) -> None:
    """Write one restored ``(3, H, W)`` image under ``save_root`` in its blurred file's layout."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise DatasetError(f"sample name {name!r} cannot be used as a file name under {str(save_root)!r}")
    image, info, suffix = restored.cpu(), None, ".png"
    if files is not None:
        original, info = read_image(files.blur)
        image = from_rgb(image, to_rgb(original)[1])
        suffix = files.blur.suffix
    write_image(save_root / f"{name}{suffix}", image, info, protect=protect)
