"""On-the-fly synthetic training data: a Dataset over sharp images (or dead leaves), and a batched helper.

:class:`SyntheticBlurDataset` crops a sharp patch and blurs it with :mod:`adeblur.data.synth` in
``__getitem__``; :func:`synthesize_batch` does the same for a whole batch already on the training
device (GPU), inside the training loop. Both return the same keys, so a model sees one format:

- ``blur``, ``sharp``: ``(C, H, W)`` (batched: ``(B, C, H, W)``) float32 in [0, 1];
- ``mask``: ``(1, H, W)``, 1 = blurred: the moving objects and their smear for local blur, all ones for
  global (camera-shake) blur, as for GoPro-style data without masks;
- ``displacement_start``, ``displacement_end``: ``(2, H, W)`` pixels, mid-exposure -> start / end of the
  exposure for local blur (x rightwards, y downwards), zero for global blur (camera shake is not a
  quadratic motion about mid-exposure, so there is no ground truth in M2AENet's sense);
- ``kernel``: ``(1, K, K)``, only when ``kind="global"`` (one canvas size for the whole dataset, so
  default collation works); a ``"mixed"`` dataset leaves it out because local samples have none;
- ``name`` (``str``) and ``kind`` (``"local"`` or ``"global"``) in dataset samples.

docs/synthetic-blur.md describes the models, the constants and the timings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adeblur.data.synth import dead_leaves, synthesize_global_blur, synthesize_local_blur
from adeblur.data.transforms import as_generator, patch_size_pair, sample_generator
from adeblur.errors import ConfigError, DatasetError, ImageError
from adeblur.io import list_images, read_image, to_rgb

__all__ = ["KINDS", "SyntheticBlurDataset", "synthesize_batch", "with_kernel_canvas"]

KINDS = ("local", "global", "mixed")
"""Blur kinds: local object motion, global camera shake, or a per-sample random choice of the two."""

DEAD_LEAVES_LENGTH = 1000
"""Default number of samples of a dataset without images (dead leaves are unlimited)."""


def synthesize_batch(
    sharp: torch.Tensor,
    kind: str,
    generator: torch.Generator | int,
    *,
    object_source: torch.Tensor | None = None,
    global_fraction: float = 0.5,
    local_options: Mapping[str, Any] | None = None,
    global_options: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Blur a sharp batch on its own device: the training-loop counterpart of :class:`SyntheticBlurDataset`.

    Args:
        sharp: ``(B, C, H, W)`` in [0, 1].
        kind: ``"local"`` (:func:`~adeblur.data.synth.synthesize_local_blur`), ``"global"``
            (:func:`~adeblur.data.synth.synthesize_global_blur`) or ``"mixed"`` (each image is global
            with probability ``global_fraction``, else local).
        generator: random source (:class:`torch.Generator`, on any device, or int seed).
        object_source: ``(B, C, H, W)`` textures of the moving objects; default: the batch rolled by
            one image, so objects come from other scenes.
        local_options, global_options: keyword arguments of the two synthesizers.

    Returns:
        ``blur``, ``sharp``, ``mask``, ``displacement_start``, ``displacement_end`` (see the module
        docstring), plus ``kernel`` ``(B, 1, K, K)`` when ``kind == "global"``.

    >>> out = synthesize_batch(torch.rand(2, 3, 32, 32), "mixed", 0, local_options={"max_displacement": 4})
    >>> sorted(out), out["mask"].shape
    (['blur', 'displacement_end', 'displacement_start', 'mask', 'sharp'], torch.Size([2, 1, 32, 32]))
    """
    if kind not in KINDS:
        raise ConfigError(f"synthetic blur kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(sharp, torch.Tensor) or sharp.ndim != 4:
        raise ValueError(f"sharp must be a (B, C, H, W) tensor, got {getattr(sharp, 'shape', type(sharp).__name__)}")
    generator = as_generator(generator)
    local_options = dict(local_options or {})
    global_options = dict(global_options or {})
    if object_source is None:
        object_source = sharp.roll(1, dims=0)
    if kind == "local":
        return _local(sharp, object_source, generator, local_options)
    if kind == "global":
        return _global(sharp, generator, global_options)

    draw = torch.rand(sharp.shape[0], generator=generator, device=generator.device)
    is_global = draw.to(sharp.device) < global_fraction
    local_index, global_index = (~is_global).nonzero().squeeze(1), is_global.nonzero().squeeze(1)
    parts = []
    if local_index.numel():
        parts.append((local_index, _local(sharp[local_index], object_source[local_index], generator, local_options)))
    if global_index.numel():
        parts.append((global_index, _global(sharp[global_index], generator, global_options)))
    out = {}
    for key in ("blur", "sharp", "mask", "displacement_start", "displacement_end"):
        first = parts[0][1][key]
        merged = first.new_empty((sharp.shape[0], *first.shape[1:]))
        for index, part in parts:
            merged[index] = part[key]
        out[key] = merged
    return out


def _local(sharp: torch.Tensor, object_source: torch.Tensor, generator, options: dict) -> dict[str, torch.Tensor]:
    return synthesize_local_blur(sharp, generator=generator, object_source=object_source, **options)


def _global(sharp: torch.Tensor, generator, options: dict) -> dict[str, torch.Tensor]:
    out = synthesize_global_blur(sharp, generator=generator, **options)
    batch, _, height, width = sharp.shape
    out["mask"] = sharp.new_ones(batch, 1, height, width)
    out["displacement_start"] = sharp.new_zeros(batch, 2, height, width)
    out["displacement_end"] = sharp.new_zeros(batch, 2, height, width)
    return out


def with_kernel_canvas(global_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``global_options`` plus a fixed ``kernel_size`` of ``2 * length_range[1] - 1`` (129 by default;
    6 pixels more when random-walk kernels, which are thickened, may be drawn) unless it gives kernels
    or a size: one canvas for every sample, so batches stack.

    >>> with_kernel_canvas({"length_range": (5, 9)})["kernel_size"]
    17
    >>> with_kernel_canvas({"length_range": (5, 9), "kernel_model": {"random-walk": 1}})["kernel_size"]
    23
    """
    options = dict(global_options or {})
    if "kernels" not in options and "kernel_size" not in options:
        longest = options.get("length_range", (7, 65))[1]
        model = options.get("kernel_model", "trajectory")
        thickened = "random-walk" in ([model] if isinstance(model, str) else list(model))
        options["kernel_size"] = 2 * math.ceil(longest) - 1 + (6 if thickened else 0)
    return options


class SyntheticBlurDataset(Dataset):
    """Sharp patches blurred on the fly: a folder (or list) of sharp images, or dead leaves.

    Sample ``i`` is a pure function of ``(seed, epoch, i)`` (via
    :func:`~adeblur.data.transforms.sample_generator`): identical in every DataLoader worker and every
    run; :meth:`set_epoch` draws new patches and blurs for a new epoch (call it before iterating; with
    ``persistent_workers`` the workers keep their own copy of the epoch).

    Per sample: image ``i % N`` is read (:func:`adeblur.io.read_image`; grey becomes RGB, alpha is
    dropped), upscaled (bicubic, keeping its aspect ratio) if a side is shorter than the patch - upscaling
    keeps natural image statistics, where mirror padding would invent symmetric structures - and a
    random ``patch_size`` window is cut; then it is blurred (``kind``: ``"local"``, ``"global"`` or
    ``"mixed"``, as :func:`synthesize_batch`). Moving objects are textured with a random patch of a
    random image of the list (another dead-leaves patch without images).

    Args:
        images: a folder (its images, not recursive), or a sequence of folders and image paths, or None
            for dead leaves.
        kind: blur kind.
        patch_size: ``N`` or ``(height, width)``.
        length: number of samples; default: the number of images (1000 for dead leaves).
        seed: base seed.
        global_fraction: probability of global blur in a ``"mixed"`` dataset.
        local_options, global_options: keyword arguments of
            :func:`~adeblur.data.synth.synthesize_local_blur` and
            :func:`~adeblur.data.synth.synthesize_global_blur`. Unless given, generated kernels are put
            on a ``2 * length_range[1] - 1`` canvas (129 by default), the same for every sample.
        blur: False leaves the blurring to the training loop (:func:`synthesize_batch` on the training
            device, batched): samples then hold only ``sharp``, ``kind`` and ``name``.
        cache_images: keep each decoded image in memory (8-bit) after its first use, so an epoch does
            not decode every file again (in each DataLoader worker: a copy per worker).
        scale_range: ``(low, high)`` within (0, 1]: each photo patch is cut from the image shrunk by a
            factor drawn uniformly in the range (a window of ``patch / factor`` pixels, resized with
            antialiasing), so one blur length meets content at several scales, and camera photos'
            softness is reduced. Limited per image so that the window fits. ``None``: no rescaling.

    Raises:
        DatasetError: a missing or empty folder, an empty list, missing files.
        ConfigError: an unknown ``kind``, a non-positive ``patch_size`` or ``length``.

    >>> data = SyntheticBlurDataset(kind="global", patch_size=32, length=4,
    ...                             global_options={"length_range": (5, 9)})
    >>> sample = data[0]
    >>> len(data), sample["blur"].shape, sample["kernel"].shape, sample["name"]
    (4, torch.Size([3, 32, 32]), torch.Size([1, 17, 17]), 'dead_leaves_000000')
    """

    def __init__(
        self,
        images: str | Path | Sequence[str | Path] | None = None,
        *,
        kind: str = "local",
        patch_size: int | Sequence[int] = 256,
        length: int | None = None,
        seed: int = 0,
        global_fraction: float = 0.5,
        local_options: Mapping[str, Any] | None = None,
        global_options: Mapping[str, Any] | None = None,
        blur: bool = True,
        cache_images: bool = False,
        scale_range: Sequence[float] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"synthetic blur kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.paths = _image_paths(images)
        self.kind = kind
        self.patch_size = patch_size_pair(patch_size)
        if length is None:
            length = len(self.paths) if self.paths else DEAD_LEAVES_LENGTH
        if int(length) < 1:
            raise ConfigError(f"length must be >= 1, got {length}")
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0
        self.global_fraction = float(global_fraction)
        self.local_options = dict(local_options or {})
        self.global_options = dict(global_options or {})
        self.blur = bool(blur)
        self.cache_images = bool(cache_images)
        self._decoded: dict[int, torch.Tensor] = {}
        self.global_options = with_kernel_canvas(self.global_options)
        if scale_range is not None:
            low, high = (float(v) for v in scale_range)
            if not 0 < low <= high <= 1:
                raise ConfigError(f"scale_range must be (low, high) with 0 < low <= high <= 1, got {scale_range!r}")
            scale_range = (low, high)
        self.scale_range = scale_range

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the patches and blurs of ``epoch`` (samples differ from one epoch to the next)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.length <= index < self.length:
            raise IndexError(f"sample index {index} out of range for a dataset of {self.length}")
        index %= self.length
        generator = sample_generator(self.seed, self.epoch, index)
        sharp, name = self._patch(index % len(self.paths) if self.paths else None, generator)
        kind = self.kind
        if kind == "mixed":
            kind = "global" if float(torch.rand((), generator=generator)) < self.global_fraction else "local"
        if not self.blur:
            return {"sharp": sharp, "name": f"{name}_{index:06d}", "kind": kind}
        object_source = None
        if kind == "local":
            other = int(torch.randint(len(self.paths), (), generator=generator)) if self.paths else None
            object_source = self._patch(other, generator)[0][None]
        out = synthesize_batch(
            sharp[None],
            kind,
            generator,
            object_source=object_source,
            local_options=self.local_options,
            global_options=self.global_options,
        )
        sample: dict[str, Any] = {key: value[0] for key, value in out.items()}
        if self.kind == "mixed":
            sample.pop("kernel", None)
        sample["name"] = f"{name}_{index:06d}"
        sample["kind"] = kind
        return sample

    def _patch(self, image_number: int | None, generator: torch.Generator) -> tuple[torch.Tensor, str]:
        """A random RGB ``patch_size`` patch of image ``image_number`` (dead leaves for None), and its name."""
        height, width = self.patch_size
        if image_number is None:
            return dead_leaves(1, height, width, generator=generator)[0], "dead_leaves"
        path = self.paths[image_number]
        image = self._decoded.get(image_number)
        if image is None:
            try:
                image = to_rgb(read_image(path)[0])[0]
            except ImageError as err:
                raise DatasetError(f"synthetic dataset: {err}") from err
            if self.cache_images:
                self._decoded[image_number] = (image * 255).round().to(torch.uint8)
        else:
            image = image.to(torch.float32) / 255
        image_height, image_width = image.shape[-2:]
        window = (height, width)  # the crop, resized to the patch when it differs
        if self.scale_range is not None:
            low, high = self.scale_range
            factor = low + (high - low) * float(torch.rand((), generator=generator))
            factor = max(factor, height / image_height, width / image_width)  # the window must fit
            if factor < 1:
                window = (min(image_height, round(height / factor)), min(image_width, round(width / factor)))
        scale = max(height / image_height, width / image_width)
        if scale > 1:
            size = (max(height, math.ceil(image_height * scale)), max(width, math.ceil(image_width * scale)))
            image = F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)
            image_height, image_width = size
        top = int(torch.randint(image_height - window[0] + 1, (), generator=generator))
        left = int(torch.randint(image_width - window[1] + 1, (), generator=generator))
        patch = image[:, top : top + window[0], left : left + window[1]]
        if window != (height, width):
            patch = F.interpolate(patch[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)
            patch = patch[0].clamp(0, 1)
        return patch.contiguous(), path.stem

    def __repr__(self) -> str:
        source = f"{len(self.paths)} images" if self.paths else "dead leaves"
        return (
            f"SyntheticBlurDataset({source}, kind={self.kind!r}, patch_size={self.patch_size}, "
            f"length={self.length}, seed={self.seed})"
        )


def _image_paths(images: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if images is None:
        return []
    if isinstance(images, (str, Path)):
        images = [images]
    paths = []
    for item in map(Path, images):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise DatasetError(f"synthetic dataset: no images in {str(item)!r}")
            paths += found
        else:
            paths.append(item)
    if not paths:
        raise DatasetError("synthetic dataset: the list of images is empty")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(repr(p) for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"synthetic dataset: {len(missing)} missing image file(s): {shown}")
    return paths



