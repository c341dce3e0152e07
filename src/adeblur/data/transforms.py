"""Paired augmentations: one random decision applied to every image-like entry of a sample.

A *sample* is a dict as produced by :mod:`adeblur.data.datasets`. The transforms here look at each
entry by what it is:

- **image-like**: any tensor of rank >= 3 laid out ``(..., C, H, W)`` (``blur``, ``sharp``, ``mask``,
  and whatever else a dataset adds). Cropped, flipped and rotated as pixels.
- **vector fields**: keys starting with ``displacement`` (``displacement_start``,
  ``displacement_end``), ``(..., 2, H, W)`` in pixels, channel 0 = x (rightwards), channel 1 = y
  (downwards). Cropped like images (a translation does not change a displacement); a flip or rotation
  moves the vectors *and* turns their components, so a field that was the true pixel motion between
  two images stays the true motion between the transformed images.
- ``kernel``: a blur kernel ``(1, K, K)`` (or ``(K, K)``). Never cropped; flipped and rotated about
  its centre exactly like the image, because the blur of a flipped image is the flipped blur of the
  image with the flipped kernel: ``blur(T x, T k) == T blur(x, k)``.
- anything else (``name``, numbers, strings) is passed through untouched.

Randomness comes only from an explicit :class:`torch.Generator` (or an integer seed). A dataset makes
sample ``i`` reproducible by calling its transform with ``sample_generator(seed, epoch, i)``.

Transforms return a new dict and never modify their input. Crops are copied (``clone``) so that a
small patch does not keep the full image's storage alive, e.g. across DataLoader workers.

A patch larger than the image is an error (:class:`~adeblur.errors.DatasetError` naming the sample),
not padded: padding would invent content the loss then trains on.

>>> import torch
>>> sample = {"blur": torch.rand(3, 8, 8), "sharp": torch.rand(3, 8, 8), "name": "a"}
>>> augment = Compose([RandomCrop(4), RandomFlipRotate()])
>>> patch = augment(sample, sample_generator(0, 7))
>>> patch["blur"].shape, patch["name"]
(torch.Size([3, 4, 4]), 'a')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from adeblur.errors import ConfigError, DatasetError

__all__ = [
    "BlurAwareCrop",
    "Compose",
    "RandomCrop",
    "RandomFlipRotate",
    "Sample",
    "SampleTransform",
    "blur_aware_crop",
    "crop",
    "flip_rotate",
    "random_crop",
    "random_flip_rotate",
    "sample_generator",
]

Sample = dict[str, Any]
"""A dataset sample: ``blur``, ``sharp`` ``(C, H, W)``, ``name``; optional ``mask``, ``kernel``..."""

SampleTransform = Callable[[Sample, "torch.Generator | int"], Sample]
"""What a dataset's ``transform`` is called as: ``transform(sample, generator)``."""

KERNEL_KEY = "kernel"
VECTOR_FIELD_PREFIX = "displacement"

# LBAG's blur-aware patch cropping (Li et al., AAAI 2023), constants from the authors' release
# (github.com/LeiaLi/ReLoBlur): configs/LBAG.yaml `force_blur_region_p: 0.5`, dataset.py `R_blur > 0.05`.
LBAG_FORCE_BLUR_PROBABILITY = 0.5
LBAG_MIN_BLUR_FRACTION = 0.05


def sample_generator(seed: int, *indices: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and any further integers (epoch, sample index...).

    The integers are mixed with :class:`numpy.random.SeedSequence`, so nearby seeds and indices give
    unrelated streams and ``(seed, epoch, index)`` never collides with ``(seed, epoch', index')``.

    >>> a = torch.rand(2, generator=sample_generator(0, 1, 5))
    >>> b = torch.rand(2, generator=sample_generator(0, 1, 5))
    >>> bool((a == b).all())
    True
    """
    words = [int(seed), *(int(i) for i in indices)]
    if any(w < 0 for w in words):
        raise ValueError(f"sample_generator: seed and indices must be >= 0, got {words}")
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    generator = torch.Generator()
    generator.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return generator


def crop(sample: Mapping[str, Any], top: int, left: int, height: int, width: int) -> Sample:
    """Cut the window ``[top, top + height) x [left, left + width)`` from every image-like entry.

    Vector fields are cut the same way (their values are unchanged); ``kernel`` and non-tensors are
    kept as they are. Raises :class:`DatasetError` when the window does not fit in the image.

    >>> out = crop({"blur": torch.arange(16.).view(1, 4, 4), "name": "x"}, 1, 2, 2, 2)
    >>> out["blur"].tolist()
    [[[6.0, 7.0], [10.0, 11.0]]]
    """
    image_height, image_width = _spatial_size(sample)
    if height <= 0 or width <= 0:
        raise ValueError(f"crop: size must be positive, got {height}x{width}")
    if top < 0 or left < 0 or top + height > image_height or left + width > image_width:
        raise DatasetError(
            f"sample {sample.get('name', '?')!r}: patch {height}x{width} at (top={top}, left={left}) "
            f"does not fit in the image of {image_height}x{image_width} (HxW)"
        )
    out: Sample = {}
    for key, value in sample.items():
        if _is_spatial(key, value):
            value = value[..., top : top + height, left : left + width].clone()
        out[key] = value
    return out


def random_crop(
    sample: Mapping[str, Any], size: int | Sequence[int], *, generator: torch.Generator | int
) -> Sample:
    """Crop a ``size`` patch at a uniformly random position, the same for every image-like entry.

    ``size`` is ``N`` or ``(height, width)``. Every top-left position that fits is equally likely.

    >>> s = {"blur": torch.rand(3, 10, 12), "mask": torch.ones(1, 10, 12)}
    >>> {k: tuple(v.shape) for k, v in random_crop(s, (4, 6), generator=0).items()}
    {'blur': (3, 4, 6), 'mask': (1, 4, 6)}
    """
    generator = as_generator(generator)
    height, width = patch_size_pair(size)
    image_height, image_width = _spatial_size(sample)
    _check_patch_fits(sample, height, width, image_height, image_width)
    top = _randint(image_height - height + 1, generator)
    left = _randint(image_width - width + 1, generator)
    return crop(sample, top, left, height, width)


def blur_aware_crop(
    sample: Mapping[str, Any],
    size: int | Sequence[int],
    *,
    generator: torch.Generator | int,
    force_blur_probability: float = LBAG_FORCE_BLUR_PROBABILITY,
    min_blur_fraction: float = LBAG_MIN_BLUR_FRACTION,
) -> Sample:
    """LBAG's blur-aware patch cropping: centre the patch on a blurred pixel some of the time.

    The rule (Li et al., "Real-world deep local motion deblurring", AAAI 2023, §"blur-aware patch
    cropping"; constants from the authors' ``dataset.py`` and ``configs/LBAG.yaml``):

    1. With probability ``force_blur_probability`` (LBAG: 0.5) the crop is *forced*.
    2. A forced crop applies only if the blurred fraction of the whole image, ``mask.mean()``,
       exceeds ``min_blur_fraction`` (LBAG: 0.05) and some blurred pixel ``(y, x)`` can be the
       patch centre, i.e. ``top = y - height // 2`` and ``left = x - width // 2`` keep the patch
       inside the image. The centre is drawn uniformly among those blurred pixels, so every such
       pixel is equally likely.
    3. Otherwise (not forced, too little blur, or no admissible centre) it is :func:`random_crop`.

    A sample without ``mask`` is always cropped by :func:`random_crop`. The mask is the
    sample's ``mask`` entry, ``(1, H, W)`` with 1 = blurred (values above 0.5 count as blurred).

    Two deliberate differences from the released code, both documented in docs/datasets.md:
    LBAG draws top-left corners from ``[0, H - 1 - size]`` (one position short of the last row and
    column); here every position that fits is allowed. LBAG computes the blurred fraction on the raw
    8-bit mask values; here it is the fraction of blurred pixels, which equals LBAG's number for
    0/1-valued masks (for 0/255 masks LBAG's test is effectively ``fraction > 0.05 / 255``, which
    ``min_blur_fraction=0.05 / 255`` reproduces).

    >>> mask = torch.zeros(1, 32, 32); mask[:, 20:30, 20:30] = 1
    >>> s = {"blur": torch.rand(3, 32, 32), "mask": mask}
    >>> patch = blur_aware_crop(s, 8, generator=0, force_blur_probability=1.0)
    >>> float(patch["mask"][0, 4, 4])  # the centre pixel is blurred
    1.0
    """
    if not 0.0 <= force_blur_probability <= 1.0:
        raise ValueError(f"force_blur_probability must be in [0, 1], got {force_blur_probability}")
    generator = as_generator(generator)
    mask = sample.get("mask")
    if not isinstance(mask, torch.Tensor):
        return random_crop(sample, size, generator=generator)
    height, width = patch_size_pair(size)
    image_height, image_width = _spatial_size(sample)
    _check_patch_fits(sample, height, width, image_height, image_width)

    forced = bool(torch.rand((), generator=generator) < force_blur_probability)
    if forced:
        blurred = (mask > 0.5).reshape(-1, image_height, image_width).any(dim=0)
        if blurred.float().mean().item() > min_blur_fraction:
            # Admissible centres: the patch centred there stays inside the image.
            admissible = blurred[
                height // 2 : image_height - height + height // 2 + 1,
                width // 2 : image_width - width + width // 2 + 1,
            ]
            candidates = admissible.nonzero()
            if len(candidates) > 0:
                top, left = candidates[_randint(len(candidates), generator)].tolist()
                return crop(sample, top, left, height, width)
    return random_crop(sample, (height, width), generator=generator)


def flip_rotate(
    sample: Mapping[str, Any], *, hflip: bool = False, vflip: bool = False, rot90: int = 0
) -> Sample:
    """Apply a horizontal flip, then a vertical flip, then ``rot90`` quarter turns, to every entry.

    A quarter turn is ``torch.rot90(x, 1, dims=(-2, -1))``: counter-clockwise on screen (y down); the
    pixel at column ``x``, row ``y`` of a ``W``-wide image moves to column ``y``, row ``W - 1 - x``.
    Vector fields move the same way and their components turn with them: a flip negates the flipped
    axis' component, a quarter turn maps ``(dx, dy)`` to ``(dy, -dx)``. Kernels get the same pixel
    operation as images. Odd turns swap height and width.

    >>> field = torch.zeros(2, 3, 3); field[0] = 1.0  # everything moves one pixel right
    >>> turned = flip_rotate({"displacement_end": field}, rot90=1)["displacement_end"]
    >>> turned[:, 0, 0].tolist()  # ... which after a counter-clockwise turn is one pixel up
    [0.0, -1.0]
    """
    turns = int(rot90) % 4
    out: Sample = {}
    for key, value in sample.items():
        if isinstance(value, torch.Tensor) and (key == KERNEL_KEY or _is_spatial(key, value)):
            if _is_vector_field(key, value):
                value = _flip_rotate_vectors(value, hflip, vflip, turns)
            else:
                value = _flip_rotate_pixels(value, hflip, vflip, turns)
        out[key] = value
    return out


def random_flip_rotate(
    sample: Mapping[str, Any],
    *,
    generator: torch.Generator | int,
    hflip: bool = True,
    vflip: bool = True,
    rot90: bool = True,
) -> Sample:
    """Random :func:`flip_rotate`: each enabled flip with probability 1/2, 0-3 quarter turns uniformly.

    With all three enabled, the 8 symmetries of the square are equally likely. One random integer
    is drawn whatever is enabled, so switching an option off does not shift later random draws.

    >>> s = {"blur": torch.arange(4.).view(1, 2, 2), "name": "x"}
    >>> random_flip_rotate(s, generator=3)["blur"].shape
    torch.Size([1, 2, 2])
    """
    code = _randint(16, as_generator(generator))
    return flip_rotate(
        sample,
        hflip=hflip and bool(code & 1),
        vflip=vflip and bool(code & 2),
        rot90=(code >> 2) if rot90 else 0,
    )


class Compose:
    """Chain sample transforms; each one draws from the same generator, in order.

    >>> t = Compose([RandomCrop(2), RandomFlipRotate(rot90=False)])
    >>> t({"blur": torch.rand(1, 4, 4)}, 0)["blur"].shape
    torch.Size([1, 2, 2])
    """

    def __init__(self, transforms: Sequence[SampleTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Mapping[str, Any], generator: torch.Generator | int) -> Sample:
        generator = as_generator(generator)
        out = dict(sample)
        for transform in self.transforms:
            out = transform(out, generator)
        return out

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCrop:
    """:func:`random_crop` as a transform: ``RandomCrop(256)(sample, generator)``."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = patch_size_pair(size)

    def __call__(self, sample: Mapping[str, Any], generator: torch.Generator | int) -> Sample:
        return random_crop(sample, self.size, generator=generator)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size})"


class BlurAwareCrop:
    """:func:`blur_aware_crop` (LBAG's rule) as a transform: ``BlurAwareCrop(256)(sample, generator)``."""

    def __init__(
        self,
        size: int | Sequence[int],
        force_blur_probability: float = LBAG_FORCE_BLUR_PROBABILITY,
        min_blur_fraction: float = LBAG_MIN_BLUR_FRACTION,
    ) -> None:
        self.size = patch_size_pair(size)
        self.force_blur_probability = force_blur_probability
        self.min_blur_fraction = min_blur_fraction

    def __call__(self, sample: Mapping[str, Any], generator: torch.Generator | int) -> Sample:
        return blur_aware_crop(
            sample,
            self.size,
            generator=generator,
            force_blur_probability=self.force_blur_probability,
            min_blur_fraction=self.min_blur_fraction,
        )

    def __repr__(self) -> str:
        return (
            f"BlurAwareCrop(size={self.size}, force_blur_probability={self.force_blur_probability}, "
            f"min_blur_fraction={self.min_blur_fraction})"
        )


class RandomFlipRotate:
    """:func:`random_flip_rotate` as a transform: ``RandomFlipRotate()(sample, generator)``."""

    def __init__(self, hflip: bool = True, vflip: bool = True, rot90: bool = True) -> None:
        self.hflip = hflip
        self.vflip = vflip
        self.rot90 = rot90

    def __call__(self, sample: Mapping[str, Any], generator: torch.Generator | int) -> Sample:
        return random_flip_rotate(
            sample, generator=generator, hflip=self.hflip, vflip=self.vflip, rot90=self.rot90
        )

    def __repr__(self) -> str:
        return f"RandomFlipRotate(hflip={self.hflip}, vflip={self.vflip}, rot90={self.rot90})"


# --- helpers -------------------------------------------------------------------------------------


def as_generator(generator: torch.Generator | int) -> torch.Generator:
    """A :class:`torch.Generator` as given, or ``torch.Generator().manual_seed(seed)`` for an int seed."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")


def _randint(high: int, generator: torch.Generator) -> int:
    """Uniform integer in ``[0, high)``."""
    return int(torch.randint(high, (), generator=generator))


def patch_size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from ``N`` or ``(height, width)``; ConfigError unless two positive integers."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pair):
        raise ConfigError(f"patch size must be N or (height, width) with positive integers, got {size!r}")
    return int(pair[0]), int(pair[1])


def _is_vector_field(key: str, value: object) -> bool:
    return key.startswith(VECTOR_FIELD_PREFIX) and isinstance(value, torch.Tensor)


def _is_spatial(key: str, value: object) -> bool:
    """Image-like or vector field: everything that is cropped."""
    return isinstance(value, torch.Tensor) and key != KERNEL_KEY and value.dim() >= 3


def _spatial_size(sample: Mapping[str, Any]) -> tuple[int, int]:
    sizes = {key: tuple(v.shape[-2:]) for key, v in sample.items() if _is_spatial(key, v)}
    if not sizes:
        raise ValueError(f"sample {sample.get('name', '?')!r} has no image-like tensor (rank >= 3)")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k} {h}x{w}" for k, (h, w) in sizes.items())
        raise ValueError(f"sample {sample.get('name', '?')!r}: image-like entries differ in size: {listed}")
    for key, value in sample.items():
        if _is_vector_field(key, value) and value.dim() >= 3 and value.shape[-3] != 2:
            raise ValueError(f"{key} must be (..., 2, H, W), got {tuple(value.shape)}")
    return next(iter(sizes.values()))  # type: ignore[return-value]


def _check_patch_fits(
    sample: Mapping[str, Any], height: int, width: int, image_height: int, image_width: int
) -> None:
    if height > image_height or width > image_width:
        raise DatasetError(
            f"sample {sample.get('name', '?')!r}: patch {height}x{width} is larger than the image "
            f"{image_height}x{image_width} (HxW)"
        )


def _flip_rotate_pixels(value: torch.Tensor, hflip: bool, vflip: bool, turns: int) -> torch.Tensor:
    if hflip:
        value = value.flip(-1)
    if vflip:
        value = value.flip(-2)
    if turns:
        value = torch.rot90(value, turns, dims=(-2, -1))
    return value


def _flip_rotate_vectors(field: torch.Tensor, hflip: bool, vflip: bool, turns: int) -> torch.Tensor:
    field = _flip_rotate_pixels(field, hflip, vflip, turns)
    dx, dy = field.unbind(-3)
    if hflip:
        dx = -dx
    if vflip:
        dy = -dy
    for _ in range(turns):  # a counter-clockwise quarter turn maps (dx, dy) to (dy, -dx)
        dx, dy = dy, -dx
    return torch.stack((dx, dy), dim=-3)
