"""Synthetic motion blur in PyTorch: batched, deterministic from a seed, usable on the training device.

Two kinds of blur, plus the sharp content and the kernels they need (docs/synthetic-blur.md has every
model and constant):

- **global camera shake** (the GoPro case): :func:`synthesize_global_blur` convolves a sharp batch with
  one kernel per image, either a random camera-shake trajectory (:func:`trajectory_kernels`), a
  straight line (:func:`linear_kernel`, :func:`linear_kernels`) or kernels read from files
  (:func:`load_kernels`); then optional Gaussian/Poisson noise (:func:`add_noise`) and 8-bit
  quantisation (:func:`quantize_8bit`).
- **local object motion** (the ReLoBlur case): :func:`synthesize_local_blur` moves foreground layers
  over a static background along quadratic trajectories ``p(t) = v t + a t^2``, ``t`` in
  ``[-1/2, 1/2]`` (mid-exposure ``t = 0``), and returns the sharp mid-exposure frame, the blurred frame
  (the mean of the sub-frames, with correct occlusion), the blur mask and the per-pixel displacements
  mid-exposure -> start and mid-exposure -> end (what M2AENet's intra-motion analyser predicts).
  :func:`composite_moving_layers` is its deterministic renderer, for layers of your own.
- :func:`dead_leaves`: scale-invariant random sharp images, so training never lacks content.

Conventions: images ``(B, C, H, W)`` float in ``[0, 1]``; kernels ``(B, 1, K, K)``, non-negative,
summing to 1, applied as a true convolution (the kernel is flipped relative to ``conv2d``'s
correlation); displacements ``(B, 2, H, W)`` in pixels, channel 0 = x (rightwards), channel 1 = y
(downwards). Randomness comes only from the ``generator`` argument (a :class:`torch.Generator` or an
int seed): random numbers are drawn on the generator's device, so one seed gives one output per device.

>>> import torch
>>> sharp = dead_leaves(2, 32, 32, generator=0)
>>> out = synthesize_local_blur(sharp, generator=1, max_displacement=6.0)
>>> sorted(out)
['blur', 'displacement_end', 'displacement_start', 'mask', 'sharp']
>>> out["blur"].shape, out["displacement_end"].shape
(torch.Size([2, 3, 32, 32]), torch.Size([2, 2, 32, 32]))
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io
import torch
import torch.nn.functional as F

from adeblur.data.camera import boost_highlights, from_linear, jpeg_compress, to_linear
from adeblur.data.transforms import as_generator
from adeblur.errors import ConfigError, ImageError, KernelError, one_line
from adeblur.io import IMAGE_EXTENSIONS, read_image

__all__ = [
    "BORDERS",
    "KERNEL_FAMILIES",
    "KERNEL_FILE_EXTENSIONS",
    "add_noise",
    "blur_with_kernels",
    "center_kernel",
    "composite_moving_layers",
    "dead_leaves",
    "defocus_kernels",
    "linear_kernel",
    "linear_kernels",
    "load_kernel",
    "load_kernels",
    "quantize_8bit",
    "random_kernels",
    "random_linear_kernels",
    "random_walk_kernels",
    "synthesize_global_blur",
    "synthesize_layered_blur",
    "synthesize_local_blur",
    "trajectory_kernels",
]

BORDERS = ("reflect", "replicate", "circular", "zero")
"""Border modes of :func:`blur_with_kernels` (``reflect`` mirrors without repeating the edge pixel)."""

KERNEL_FILE_EXTENSIONS = frozenset({*IMAGE_EXTENSIONS, ".npy", ".mat"})
"""File types :func:`load_kernels` reads."""

FFT_MIN_KERNEL_PIXELS = 150
"""``blur_with_kernels(method="auto")`` uses the FFT when ``Kh * Kw`` is at least this (from 13x13).

Measured on a shared 2-core CPU, 8x3x256x256 with per-image kernels (best of 3): 11x11 direct 24 ms,
FFT 28 ms; 15x15 direct 46 ms, FFT 35 ms; 65x65 direct 223 ms, FFT 35 ms (docs/synthetic-blur.md)."""

_SPLAT_MAX_STEP = 0.25  # trajectory samples at most this many pixels apart before splatting
_SWEEP_EPSILON = {torch.float32: 1e-5, torch.float64: 1e-12}  # mean coverage below: "layer never here"
_MAX_CHUNK_ELEMENTS = 1 << 22  # bound on temporaries in the stamp and overlap renderers
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's "L" conversion
_MATLAB_NUMERIC_CLASSES = {"", "double", "single", *(f"{u}int{n}" for u in ("", "u") for n in (8, 16, 32, 64))}


# --------------------------------------------------------------------------------------------------
# Random numbers


def _rand(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device (reproducible there), then moved."""
    values = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return values.to(device=device, dtype=dtype)


def _randn(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    values = torch.randn(tuple(shape), generator=generator, device=generator.device)
    return values.to(device=device, dtype=dtype)


def _uniform(low: float, high: float, shape: Sequence[int], generator: torch.Generator, device, dtype) -> torch.Tensor:
    return low + (high - low) * _rand(shape, generator, device, dtype)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype computes geometry in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _range(value: float | Sequence[float], name: str) -> tuple[float, float]:
    low, high = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if not low <= high:
        raise ValueError(f"{name} must be a number or a (low, high) range with low <= high, got {value!r}")
    return float(low), float(high)


def _per_image(value: float | Sequence[float] | torch.Tensor, batch: int, generator: torch.Generator, name: str):
    """A level that is a number, a (low, high) range drawn uniformly per image, or a (B,) tensor."""
    if isinstance(value, torch.Tensor):
        return value
    low, high = _range(value, name)
    if low == high:
        return low
    return low + (high - low) * torch.rand(batch, generator=generator, device=generator.device)


# --------------------------------------------------------------------------------------------------
# Dead leaves


def dead_leaves(
    batch: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator | int,
    channels: int = 3,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    radius_range: tuple[float, float] = (0.01, 0.5),
    exponent: float = 3.0,
    coverage: float = 4.0,
    num_shapes: int | None = None,
    gradient: float = 0.25,
    lens_sigma: float = 0.5,
) -> torch.Tensor:
    """Dead-leaves images: opaque random disks dropped on top of each other, ``(B, C, H, W)`` in [0, 1].

    Each image stacks ``num_shapes`` disks in random depth order (the front-most disk covering a pixel's
    centre decides its colour). Radii follow the power law ``p(r) ~ r^-exponent`` on ``radius_range``
    (fractions of ``min(H, W)``); ``exponent = 3`` makes the model scale-invariant like natural images
    (Lee, Mumford & Huang 2001). Centres are uniform over the image. Each disk (and the background
    under all of them) has a uniform random colour plus a linear colour ramp: across a disk's radius
    each channel changes by up to ``gradient``, so regions are not flat. A Gaussian "lens" blur of
    ``lens_sigma`` pixels (reflect border) then softens the pixel-stepped edges, as a camera's optics
    would; 0 keeps them hard.

    Args:
        batch, height, width: output size.
        generator: random source (:class:`torch.Generator` or int seed).
        channels: C (3 for RGB, 1 for grey).
        device, dtype: of the result (default: the generator's device).
        radius_range: smallest and largest radius as fractions of ``min(height, width)``.
        exponent: power-law exponent of the radius density.
        coverage: with ``num_shapes=None``, drop enough disks to cover each pixel this many times on
            average (``coverage * H * W / E[pi r^2]``: ~1630 disks with the defaults, at any size), so
            the background shows through about ``exp(-coverage)`` of the image.
        num_shapes: number of disks per image (overrides ``coverage``).
        gradient: strength of the per-disk colour ramp (0 = piecewise constant).
        lens_sigma: standard deviation in pixels of the final Gaussian blur.

    >>> images = dead_leaves(2, 48, 64, generator=0)
    >>> images.shape, bool(images.min() >= 0), bool(images.max() <= 1)
    (torch.Size([2, 3, 48, 64]), True, True)
    """
    if min(batch, height, width, channels) < 1:
        sizes = (batch, height, width, channels)
        raise ValueError(f"dead_leaves: batch, height, width and channels must be >= 1, got {sizes}")
    radius_low, radius_high = _range(radius_range, "radius_range")
    if radius_low <= 0:
        raise ValueError(f"dead_leaves: radius_range must be positive, got {radius_range!r}")
    generator = as_generator(generator)
    device = torch.device(device) if device is not None else generator.device
    work = _work_dtype(dtype)
    short_side = min(height, width)
    radius_low, radius_high = radius_low * short_side, radius_high * short_side
    if num_shapes is None:
        mean_area = math.pi * _power_law_moment(2, exponent, radius_low, radius_high)
        num_shapes = max(1, math.ceil(coverage * height * width / mean_area))

    # Shape 0 is the background (covers everything, behind all); shapes 1..M are the disks.
    shapes = num_shapes + 1
    radius = _power_law_sample(_rand((batch, num_shapes), generator, device, work), exponent, radius_low, radius_high)
    centre_x = _rand((batch, num_shapes), generator, device, work) * width - 0.5
    centre_y = _rand((batch, num_shapes), generator, device, work) * height - 0.5
    colour = _rand((batch, shapes, channels), generator, device, work)
    ramp = (2 * _rand((batch, shapes, channels, 2), generator, device, work) - 1) * gradient

    label = torch.zeros(batch * height * width, dtype=torch.long, device=device)
    _paint_disks(label, (batch, height, width), centre_x, centre_y, radius)

    # Colour model per shape: colour + ramp . (pixel - centre) / radius, written as an affine map of
    # the pixel position so that only 3C numbers per pixel are gathered.
    def with_background(value: float, per_disk: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full((batch, 1), value, device=device, dtype=work), per_disk], dim=1)

    reference_x = with_background((width - 1) / 2, centre_x)
    reference_y = with_background((height - 1) / 2, centre_y)
    reference_r = with_background(math.hypot(height, width) / 2, radius)
    slope_x = ramp[..., 0] / reference_r[..., None]
    slope_y = ramp[..., 1] / reference_r[..., None]
    offset = colour - slope_x * reference_x[..., None] - slope_y * reference_y[..., None]
    table = torch.cat([offset, slope_x, slope_y], dim=-1)  # (B, M + 1, 3C)
    per_pixel = table.gather(1, label.view(batch, -1, 1).expand(-1, -1, 3 * channels))
    per_pixel = per_pixel.view(batch, height, width, 3, channels).permute(0, 3, 4, 1, 2)
    xs = torch.arange(width, device=device, dtype=work)
    ys = torch.arange(height, device=device, dtype=work)[:, None]
    image = (per_pixel[:, 0] + per_pixel[:, 1] * xs + per_pixel[:, 2] * ys).clamp(0, 1)
    if lens_sigma > 0:
        image = blur_with_kernels(image, _gaussian_kernel(lens_sigma, device, work))
    return image.to(dtype)


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised ``(1, 1, K, K)`` Gaussian, K = 2 * ceil(3 sigma) + 1."""
    half = math.ceil(3 * sigma)
    offsets = torch.arange(-half, half + 1, device=device, dtype=dtype)
    profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = profile[:, None] * profile[None, :]
    return (kernel / kernel.sum())[None, None]


def _power_law_moment(order: int, exponent: float, low: float, high: float) -> float:
    """E[r^order] for the density p(r) ~ r^-exponent on [low, high]."""

    def integral(power: float) -> float:  # integral of r^power over [low, high]
        if abs(power + 1) < 1e-12:
            return math.log(high / low)
        return (high ** (power + 1) - low ** (power + 1)) / (power + 1)

    if high == low:
        return low**order
    return integral(order - exponent) / integral(-exponent)


def _power_law_sample(uniform: torch.Tensor, exponent: float, low: float, high: float) -> torch.Tensor:
    """Inverse-CDF sampling of p(r) ~ r^-exponent on [low, high]."""
    if high == low:
        return torch.full_like(uniform, low)
    if abs(exponent - 1) < 1e-12:
        return low * (high / low) ** uniform
    power = 1 - exponent
    return (low**power + uniform * (high**power - low**power)) ** (1 / power)


def _paint_disks(
    label: torch.Tensor,
    size: tuple[int, int, int],
    centre_x: torch.Tensor,
    centre_y: torch.Tensor,
    radius: torch.Tensor,
) -> None:
    """Write into ``label`` (flat ``B*H*W``) the index (1..M) of the front-most disk covering each pixel.

    Disk m of image b covers the pixels whose centre is within ``radius[b, m]`` of its centre; a
    larger index is nearer the viewer. Each disk is tested only inside a square window around it
    (disks are grouped by size, windows growing by ~sqrt(2), so the work is about 2x the painted
    area rather than ``M * H * W``); ``scatter_reduce(amax)`` then resolves the occlusion, in any order.
    """
    batch, height, width = size
    device = label.device
    num_shapes = radius.shape[1]
    image_offset = (torch.arange(batch, device=device) * (height * width))[:, None].expand(-1, num_shapes).reshape(-1)
    depth = torch.arange(1, num_shapes + 1, device=device)[None].expand(batch, -1).reshape(-1)
    centre_x, centre_y, radius = centre_x.reshape(-1), centre_y.reshape(-1), radius.reshape(-1)
    half_needed = torch.ceil(radius + 0.5).long()  # |round(c) - c| <= 0.5
    lower, half = 0, 2
    while True:
        full_image = 2 * half + 1 >= max(height, width)
        chosen = half_needed > lower if full_image else (half_needed > lower) & (half_needed <= half)
        index = chosen.nonzero().squeeze(1)
        if full_image:
            top, left, window = torch.zeros_like(index), torch.zeros_like(index), (height, width)
        else:
            top = torch.round(centre_y[index]).long() - half
            left = torch.round(centre_x[index]).long() - half
            window = (2 * half + 1, 2 * half + 1)
        chunk = max(1, _MAX_CHUNK_ELEMENTS // (window[0] * window[1]))
        for start in range(0, index.numel(), chunk):
            part = index[start : start + chunk]
            rows = top[start : start + chunk, None] + torch.arange(window[0], device=device)
            cols = left[start : start + chunk, None] + torch.arange(window[1], device=device)
            # Squared distances along each axis; infinite outside the frame so those pixels never count.
            dy2 = torch.where((rows >= 0) & (rows < height), (rows - centre_y[part, None]) ** 2, math.inf)
            dx2 = torch.where((cols >= 0) & (cols < width), (cols - centre_x[part, None]) ** 2, math.inf)
            inside = dy2[:, :, None] + dx2[:, None, :] <= radius[part, None, None] ** 2
            row_start = image_offset[part, None] + rows.clamp(0, height - 1) * width
            flat = row_start[:, :, None] + cols.clamp(0, width - 1)[:, None, :]
            value = torch.where(inside, depth[part, None, None], 0)
            label.scatter_reduce_(0, flat.view(-1), value.view(-1), reduce="amax")
        if full_image:
            return
        lower, half = half, max(half + 1, math.ceil(half * math.sqrt(2)))


# --------------------------------------------------------------------------------------------------
# Kernels


def _splat(points: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear splatting of equally weighted points ``(N, P, 2)`` (x, y pixel coordinates) onto
    ``(N, size, size)`` canvases; each canvas sums to 1. Bilinear splatting keeps the points' mean
    as the canvas' centre of mass exactly."""
    count = points.shape[0]
    x, y = points[..., 0], points[..., 1]
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    canvas = torch.zeros(count, size * size, dtype=points.dtype, device=points.device)
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        flat = yi.clamp(0, size - 1) * size + xi.clamp(0, size - 1)
        canvas.scatter_add_(1, flat, torch.where(inside, weight, 0.0))
    canvas = canvas / canvas.sum(1, keepdim=True)
    return canvas.view(count, size, size)


def _canvas_size(half_extent: float, size: int | None, what: str) -> int:
    """Odd canvas side that holds a bilinear splat reaching ``half_extent`` pixels from the centre."""
    needed = 2 * math.floor(half_extent) + 3
    if size is None:
        return needed
    if size < needed or size % 2 == 0:
        raise KernelError(f"{what}: kernel size {size} must be odd and at least {needed} for these kernels")
    return size


def _check_length_range(length_range: Sequence[float]) -> tuple[float, float]:
    low, high = _range(length_range, "length_range")
    if low < 1:
        raise KernelError(f"length_range must be within [1, inf), got {length_range!r}")
    return low, high


def _random_extents(batch: int, length_range: Sequence[float], generator: torch.Generator, work) -> torch.Tensor:
    """Extents e (distance between the extreme points along the major axis) for kernel supports in
    ``length_range``: a bilinear splat of points spanning e pixels touches between floor(e)+1 and
    floor(e)+3 pixels, so e uniform in [low - 1, high - 3] gives supports within [low, high]."""
    low, high = _check_length_range(length_range)
    extent_low = low - 1
    extent_high = max(extent_low, high - 3)
    return _uniform(extent_low, extent_high, (batch,), generator, generator.device, work)


def trajectory_kernels(
    batch: int,
    *,
    generator: torch.Generator | int,
    size: int | None = None,
    length_range: tuple[float, float] = (7, 65),
    num_steps: int = 256,
    max_wobble: float = 9.0,
    max_turn: float = 1.5,
    max_shakes: float = 3.0,
    max_speed_variation: float = 1.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random camera-shake PSFs ``(B, 1, K, K)``: random trajectories rasterised with sub-pixel accuracy.

    The trajectory model, in the spirit of Boracchi & Foi (2012, "Modeling the performance of image
    restoration from motion blur"): a 2-D path sampled at ``num_steps`` equal time steps over the
    exposure, with

    - inertia: the heading turns smoothly; its angular velocity starts at ``U(-max_turn, max_turn)``
      radians per exposure and then performs a random walk of strength ``U(0, max_wobble)``
      (radians per exposure^1.5);
    - impulsive shakes: abrupt near-reversals of the heading (pi +- 0.5 rad) at a Poisson rate of
      ``U(0, max_shakes)`` per exposure;
    - varying speed: log-speed is a random walk of strength ``U(0, max_speed_variation)``; the PSF is
      brighter where the camera moved slowly, as each time step exposes equally.

    The path is scaled so that its larger side spans a random extent that puts the support (the
    larger side of the box around the non-zero pixels) uniformly within ``length_range``, refined
    to at most 0.25 px between samples, centred so that its centre of mass falls exactly on the
    centre pixel ``(K // 2, K // 2)``, and bilinearly splatted. Every kernel sums to 1.

    Args:
        batch: number of kernels.
        generator: random source (:class:`torch.Generator` or int seed).
        size: canvas side K (odd). Default: the smallest that holds the batch; ``2 * high - 1`` always
            suffices. A canvas too small raises :class:`KernelError`.
        length_range: (low, high) support in pixels, low >= 1.
        num_steps: time steps of the simulated path (it is refined further before splatting).
        device, dtype: of the result (the path is simulated on the generator's device).

    >>> k = trajectory_kernels(4, generator=0, length_range=(7, 15))
    >>> k.shape[:2], bool(torch.allclose(k.sum((-2, -1)), torch.ones(4, 1)))
    (torch.Size([4, 1]), True)
    """
    generator = as_generator(generator)
    if batch < 1 or num_steps < 2:
        raise ValueError(f"trajectory_kernels: batch must be >= 1 and num_steps >= 2, got {batch}, {num_steps}")
    work = torch.float64 if generator.device.type == "cpu" else torch.float32
    gdev = generator.device
    extent = _random_extents(batch, length_range, generator, work)
    dt = 1.0 / num_steps

    heading0 = _uniform(0, 2 * math.pi, (batch, 1), generator, gdev, work)
    turn0 = _uniform(-max_turn, max_turn, (batch, 1), generator, gdev, work)
    wobble = _uniform(0, max_wobble, (batch, 1), generator, gdev, work)
    shake_rate = _uniform(0, max_shakes, (batch, 1), generator, gdev, work)
    speed_variation = _uniform(0, max_speed_variation, (batch, 1), generator, gdev, work)
    turn_noise = _randn((batch, num_steps), generator, gdev, work)
    speed_noise = _randn((batch, num_steps), generator, gdev, work)
    shake_draw = _rand((batch, num_steps), generator, gdev, work)
    shake_angle = _rand((batch, num_steps), generator, gdev, work)

    angular_velocity = turn0 + wobble * torch.cumsum(turn_noise * math.sqrt(dt), dim=1)
    shakes = torch.where(shake_draw < shake_rate * dt, math.pi + (shake_angle - 0.5), 0.0)
    heading = heading0 + torch.cumsum(angular_velocity * dt, dim=1) + torch.cumsum(shakes, dim=1)
    log_speed = speed_variation * torch.cumsum(speed_noise * math.sqrt(dt), dim=1)
    speed = torch.exp(log_speed - log_speed.mean(dim=1, keepdim=True))
    steps = (speed * dt)[..., None] * torch.stack([torch.cos(heading), torch.sin(heading)], dim=-1)
    points = torch.cat([torch.zeros(batch, 1, 2, dtype=work, device=gdev), torch.cumsum(steps, dim=1)], dim=1)

    span = (points.amax(dim=1) - points.amin(dim=1)).amax(dim=-1)
    points = points * (extent / span.clamp_min(1e-12))[:, None, None]
    points = _refine(points, _SPLAT_MAX_STEP)
    points = points - points.mean(dim=1, keepdim=True)
    size = _canvas_size(float(points.abs().amax()), size, "trajectory_kernels")
    kernels = _splat(points + size // 2, size)
    device = torch.device(device) if device is not None else gdev
    return kernels.unsqueeze(1).to(device=device, dtype=dtype)


def _refine(points: torch.Tensor, max_step: float) -> torch.Tensor:
    """Linearly interpolate ``(N, P, 2)`` equal-time samples so that consecutive ones are at most
    ``max_step`` pixels apart (times stay equally spaced, so equal weights stay right)."""
    step = float((points[:, 1:] - points[:, :-1]).norm(dim=-1).amax()) if points.shape[1] > 1 else 0.0
    factor = math.ceil(step / max_step)
    if factor <= 1:
        return points
    count = (points.shape[1] - 1) * factor + 1
    refined = F.interpolate(points.transpose(1, 2), size=count, mode="linear", align_corners=True)
    return refined.transpose(1, 2)


def linear_kernels(lengths: torch.Tensor, angles_degrees: torch.Tensor, *, size: int | None = None) -> torch.Tensor:
    """Anti-aliased straight-line PSFs ``(B, 1, K, K)``, one per (length, angle) pair, each summing to 1.

    A kernel is the uniform motion along a segment of ``length`` pixels centred on the centre pixel
    ``(K // 2, K // 2)``, bilinearly splatted (so a horizontal length-7 line is a 7-pixel box with soft
    ends spread over 9 pixels). Angles are in degrees, counter-clockwise from the +x axis **as the image
    is displayed** (rows growing downwards): 0 = horizontal, 90 = vertical, 45 = from bottom-left to
    top-right, i.e. direction ``(cos a, -sin a)`` in (x, y-down) pixel coordinates. A line is symmetric,
    so ``a`` and ``a + 180`` give the same kernel. Result on ``lengths``' device, in its float dtype.

    Args:
        lengths: ``(B,)`` segment lengths in pixels (>= 0; 0 gives a centred delta).
        angles_degrees: ``(B,)`` angles.
        size: odd canvas side K. Default: the smallest that holds the batch.

    >>> k = linear_kernels(torch.tensor([5.0, 5.0]), torch.tensor([0.0, 90.0]))
    >>> k.shape, bool(torch.equal(k[1, 0], k[0, 0].T))
    (torch.Size([2, 1, 7, 7]), True)
    """
    lengths = torch.as_tensor(lengths)
    dtype = lengths.dtype if lengths.is_floating_point() else torch.float32
    work = torch.float64 if lengths.device.type == "cpu" else torch.float32
    lengths = lengths.to(work).reshape(-1)
    angles = torch.as_tensor(angles_degrees, device=lengths.device).to(work).reshape(-1)
    if lengths.shape != angles.shape or lengths.numel() == 0:
        counts = f"{lengths.numel()} and {angles.numel()}"
        raise ValueError(f"linear_kernels: need as many lengths as angles (>= 1), got {counts}")
    if bool((lengths < 0).any()) or not bool(torch.isfinite(lengths).all()):
        raise KernelError(f"linear kernel lengths must be finite and >= 0, got {lengths.tolist()}")
    radians = torch.deg2rad(angles)
    direction = torch.stack([torch.cos(radians), -torch.sin(radians)], dim=-1)  # (x, y-down)
    num_points = max(2, math.ceil(64 * float(lengths.max())) + 1)
    along = torch.linspace(-0.5, 0.5, num_points, dtype=work, device=lengths.device)
    points = along[None, :, None] * lengths[:, None, None] * direction[:, None, :]
    size = _canvas_size(float(points.abs().amax()), size, "linear_kernels")
    return _splat(points + size // 2, size).unsqueeze(1).to(dtype)


def linear_kernel(
    length: float,
    angle_degrees: float,
    *,
    size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One anti-aliased line PSF ``(1, K, K)`` summing to 1; see :func:`linear_kernels` for the model
    and the angle convention (counter-clockwise from +x as displayed, y pointing down).

    >>> k = linear_kernel(7, 0)
    >>> k.shape, [round(v, 3) for v in k[0, 4].tolist()]
    (torch.Size([1, 9, 9]), [0.018, 0.125, 0.143, 0.143, 0.143, 0.143, 0.143, 0.125, 0.018])
    """
    kernel = linear_kernels(torch.tensor([float(length)]), torch.tensor([float(angle_degrees)]), size=size)[0]
    return kernel.to(device=device, dtype=dtype)


def random_linear_kernels(
    batch: int,
    *,
    generator: torch.Generator | int,
    length_range: tuple[float, float] = (7, 65),
    size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random line PSFs ``(B, 1, K, K)``: angle uniform in [0, 180) degrees, support (larger side of the
    non-zero box) uniform within ``length_range``, as for :func:`trajectory_kernels`.

    >>> random_linear_kernels(3, generator=0, length_range=(5, 9)).shape[:2]
    torch.Size([3, 1])
    """
    generator = as_generator(generator)
    work = torch.float64 if generator.device.type == "cpu" else torch.float32
    extent = _random_extents(batch, length_range, generator, work)
    angle = _uniform(0, 180, (batch,), generator, generator.device, work)
    radians = torch.deg2rad(angle)
    major = torch.maximum(torch.cos(radians).abs(), torch.sin(radians).abs())
    kernels = linear_kernels(extent / major, angle, size=size)
    device = torch.device(device) if device is not None else generator.device
    return kernels.to(device=device, dtype=dtype)


_BF_REFERENCE_STEPS = 2000  # Boracchi & Foi's time steps; rates and strengths are rescaled to num_steps


def random_walk_kernels(
    batch: int,
    *,
    generator: torch.Generator | int,
    size: int | None = None,
    length_range: tuple[float, float] = (5, 45),
    num_steps: int = 500,
    max_anxiety: float = 0.05,
    exposure_range: tuple[float, float] = (0.2, 0.8),
    max_speed_variation: float = 1.5,
    max_dwells: int = 2,
    thickness_range: tuple[float, float] = (0.0, 0.8),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Camera-shake PSFs ``(B, 1, K, K)`` from Boracchi & Foi's random-walk trajectory model, with
    varying speed, dwell points and optical thickness.

    The path (Boracchi & Foi 2012, "Modeling the performance of image restoration from motion blur",
    Sec. III): a velocity of constant magnitude whose direction is kicked at every time step by
    ``anxiety * (gaussian_term * N(0, 1) - centripetal * position)`` (the centripetal pull makes the hand
    come back, hence loops and self-crossings) and, at rate ``big_shakes * anxiety``, reversed to
    ``pi +- 0.5`` rad with doubled speed (impulsive jerks); per kernel ``centripetal ~ U(0, 0.7)``,
    ``gaussian_term ~ U(0, 10)``, ``big_shakes ~ U(0, 0.2)`` as in their generator, and
    ``anxiety ~ U(0, max_anxiety)``, where they draw ``U(0, 0.1)``: at 0.1 most full paths are tangles
    that measured PSFs (Levin et al. 2009) do not resemble. Rates and strengths are given per 2,000 steps
    (theirs) and rescaled to ``num_steps``.

    The exposure covers a random fraction ``U(exposure_range)`` of the path. Their camera moves at
    constant speed; real hands slow down and stop, so here the camera travels the path at a speed whose
    logarithm is a random walk of strength ``U(0, max_speed_variation)``, nearly stopping at up to
    ``max_dwells`` random instants (dwell points, the bright knots of measured PSFs). The path is scaled
    so that its support falls within ``length_range`` (as :func:`trajectory_kernels`), splatted, then
    blurred by a Gaussian of ``sigma ~ U(thickness_range)`` pixels (lens and sensor: measured PSFs are
    a few pixels thick, not one), centred on its centre of mass and normalised to sum 1. The Gaussian's
    tails beyond the canvas (if ``size`` is given) are cut.

    Args:
        batch: number of kernels.
        generator: random source (:class:`torch.Generator` or int seed).
        size: odd canvas side K; default: the smallest that holds the batch.
        length_range: (low, high) support of the path in pixels, before the thickening.
        num_steps: simulated time steps.
        device, dtype: of the result (simulated on the generator's device).

    >>> k = random_walk_kernels(4, generator=0, length_range=(9, 21), size=45)
    >>> k.shape, bool(torch.allclose(k.sum((-2, -1)), torch.ones(4, 1)))
    (torch.Size([4, 1, 45, 45]), True)
    """
    generator = as_generator(generator)
    if batch < 1 or num_steps < 2:
        raise ValueError(f"random_walk_kernels: batch must be >= 1 and num_steps >= 2, got {batch}, {num_steps}")
    low_thickness, high_thickness = _range(thickness_range, "thickness_range")
    low_exposure, high_exposure = _range(exposure_range, "exposure_range")
    if low_thickness < 0 or not 0 < low_exposure <= high_exposure <= 1:
        raise ValueError("random_walk_kernels: thickness must be >= 0 and exposure within (0, 1]")
    gdev = generator.device
    work = torch.float64 if gdev.type == "cpu" else torch.float32
    extent = _random_extents(batch, length_range, generator, work)
    per_kernel = (batch, 1)
    anxiety = _uniform(0, max_anxiety, per_kernel, generator, gdev, work)
    centripetal = _uniform(0, 0.7, per_kernel, generator, gdev, work)
    gaussian_term = _uniform(0, 10, per_kernel, generator, gdev, work)
    big_shakes = _uniform(0, 0.2, per_kernel, generator, gdev, work)
    heading = _uniform(0, 2 * math.pi, (batch,), generator, gdev, work)
    kicks = _randn((num_steps, batch, 2), generator, gdev, work)
    shake_draw = _rand((num_steps, batch), generator, gdev, work)
    shake_angle = _rand((num_steps, batch), generator, gdev, work)

    # Their units: a path of at most 60 px over 2,000 steps; the shape, not the size, is kept (rescaled below).
    ratio = _BF_REFERENCE_STEPS / num_steps
    step = 60.0 / (num_steps - 1)
    velocity = step * torch.stack([torch.cos(heading), torch.sin(heading)], dim=-1)  # (B, 2)
    position = torch.zeros(batch, 2, dtype=work, device=gdev)
    path = [position]
    shake_probability = (big_shakes * anxiety * ratio).squeeze(1)
    for t in range(num_steps - 1):
        reverse = math.pi + (shake_angle[t] - 0.5)
        cos_r, sin_r = torch.cos(reverse), torch.sin(reverse)
        jerk = 2 * torch.stack([velocity[:, 0] * cos_r - velocity[:, 1] * sin_r,
                                velocity[:, 0] * sin_r + velocity[:, 1] * cos_r], dim=-1)  # fmt: skip
        jerk = jerk * (shake_draw[t] < shake_probability).unsqueeze(1)
        kick = anxiety * (gaussian_term * math.sqrt(ratio) * kicks[t] - centripetal * ratio * position) * step
        velocity = velocity + jerk + kick
        velocity = velocity / velocity.norm(dim=1, keepdim=True).clamp_min(1e-12) * step
        position = position + velocity
        path.append(position)
    path = torch.stack(path, dim=1)  # (B, T, 2), equal arc length between samples

    # Exposure window and speed profile: arc-length position u(t) on the path at equal times t.
    fraction = _uniform(low_exposure, high_exposure, per_kernel, generator, gdev, work)
    start = _rand(per_kernel, generator, gdev, work) * (1 - fraction)
    times = torch.linspace(0, 1, num_steps, dtype=work, device=gdev)
    variation = _uniform(0, max_speed_variation, per_kernel, generator, gdev, work)
    log_speed = variation * torch.cumsum(_randn((batch, num_steps), generator, gdev, work), dim=1) / math.sqrt(num_steps)
    dwell_count = torch.randint(0, max_dwells + 1, (batch, 1), generator=generator, device=gdev)
    dwell_at = _rand((batch, max(max_dwells, 1)), generator, gdev, work)
    dwell_width = _uniform(0.02, 0.08, (batch, max(max_dwells, 1)), generator, gdev, work)
    dwell_used = torch.arange(max(max_dwells, 1), device=gdev) < dwell_count
    slowdown = torch.exp(-(((times[None, None] - dwell_at[..., None]) / dwell_width[..., None]) ** 2))
    slowdown = (0.95 * slowdown * dwell_used[..., None]).amax(dim=1)  # (B, T): 0.95 = nearly stopped
    speed = torch.exp(log_speed - log_speed.mean(dim=1, keepdim=True)) * (1 - slowdown)
    travelled = torch.cumsum(speed, dim=1) - speed[:, :1]
    travelled = travelled / travelled[:, -1:].clamp_min(1e-12)
    arc = (start + fraction * travelled) * (num_steps - 1)  # fractional sample index on the path
    lower = arc.floor().long().clamp(0, num_steps - 2)
    weight = (arc - lower).unsqueeze(-1)
    lower = lower.unsqueeze(-1).expand(-1, -1, 2)
    points = torch.gather(path, 1, lower) * (1 - weight) + torch.gather(path, 1, lower + 1) * weight

    span = (points.amax(dim=1) - points.amin(dim=1)).amax(dim=-1)
    points = points * (extent / span.clamp_min(1e-12))[:, None, None]
    points = _refine(points, _SPLAT_MAX_STEP)
    points = points - points.mean(dim=1, keepdim=True)
    margin = math.ceil(3 * high_thickness)
    needed = _canvas_size(float(points.abs().amax()) + margin, None, "random_walk_kernels")
    if size is not None:
        _canvas_size(float(points.abs().amax()), size, "random_walk_kernels")  # the path itself must fit
    kernels = _splat(points + needed // 2, needed).unsqueeze(1)
    sigma = _uniform(low_thickness, high_thickness, (batch,), generator, gdev, work)
    kernels = _gaussian_blur_each(kernels, sigma)
    if size is not None and size != needed:
        kernels = _recanvas(kernels, size)
    kernels = kernels / kernels.sum((-2, -1), keepdim=True)
    device = torch.device(device) if device is not None else gdev
    return kernels.to(device=device, dtype=dtype)


def _gaussian_blur_each(kernels: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each ``(B, 1, K, K)`` canvas with its own isotropic Gaussian (``sigma`` ``(B,)`` pixels; 0 =
    unchanged), same size, zero outside: a separable grouped convolution."""
    radius = math.ceil(3 * float(sigma.max())) if sigma.numel() else 0
    if radius == 0:
        return kernels
    offsets = torch.arange(-radius, radius + 1, dtype=kernels.dtype, device=kernels.device)
    sigma = sigma.to(kernels).clamp_min(1e-6)[:, None]
    taps = torch.exp(-0.5 * (offsets[None] / sigma) ** 2)
    taps = torch.where(sigma > 1e-3, taps, (offsets[None] == 0).to(taps))  # sigma ~ 0: the identity
    taps = taps / taps.sum(1, keepdim=True)
    batch = kernels.shape[0]
    rows = F.conv2d(kernels.transpose(0, 1), taps.view(batch, 1, -1, 1), padding=(radius, 0), groups=batch)
    both = F.conv2d(rows, taps.view(batch, 1, 1, -1), padding=(0, radius), groups=batch)
    return both.transpose(0, 1)


def _recanvas(kernels: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``(B, 1, K, K)`` odd canvases on odd ``size`` canvases: zero-padded or cut at the border."""
    side = kernels.shape[-1]
    if size > side:
        pad = (size - side) // 2
        return F.pad(kernels, (pad, pad, pad, pad))
    cut = (side - size) // 2
    return kernels[..., cut : cut + size, cut : cut + size]


def defocus_kernels(
    batch: int,
    *,
    generator: torch.Generator | int,
    length_range: tuple[float, float] = (3, 15),
    size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Out-of-focus PSFs ``(B, 1, K, K)``: uniform discs (the geometric-optics circle of confusion) whose
    diameter is uniform in ``length_range`` pixels, anti-aliased by 8x8 supersampling, summing to 1.

    >>> k = defocus_kernels(2, generator=0, length_range=(5, 5))
    >>> k.shape, round(float(k[0, 0].sum()), 6), bool(k[0, 0, k.shape[-1] // 2, k.shape[-1] // 2] > 0)
    (torch.Size([2, 1, 7, 7]), 1.0, True)
    """
    generator = as_generator(generator)
    low, high = _check_length_range(length_range)
    work = torch.float64 if generator.device.type == "cpu" else torch.float32
    radius = _uniform(low, high, (batch,), generator, generator.device, work) / 2
    size = _canvas_size(high / 2, size, "defocus_kernels")
    supersample = 8
    offsets = (torch.arange(size * supersample, dtype=work, device=generator.device) + 0.5) / supersample - size / 2
    distance = torch.sqrt(offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2)
    inside = (distance <= radius[:, None, None]).to(work)
    kernels = F.avg_pool2d(inside[:, None], supersample)
    kernels = kernels / kernels.sum((-2, -1), keepdim=True).clamp_min(1e-12)
    device = torch.device(device) if device is not None else generator.device
    return kernels.to(device=device, dtype=dtype)


KERNEL_FAMILIES = ("trajectory", "random-walk", "linear", "defocus")
"""Generated kernel families of :func:`random_kernels` and ``synthesize_global_blur(kernel_model=...)``."""


def random_kernels(
    batch: int,
    *,
    generator: torch.Generator | int,
    families: str | Mapping[str, float] = "trajectory",
    length_range: tuple[float, float] = (7, 65),
    size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A batch of kernels, each from a family drawn with the given weights, all on one canvas.

    Args:
        families: one of :data:`KERNEL_FAMILIES`, or ``{family: weight}``; each kernel picks its family
            with probability proportional to the weight. Supports within ``length_range`` (a defocus
            disc's diameter, capped at half the range's top: defocus of 45 px is not camera shake).
        size: odd canvas side; default ``2 * ceil(high) - 1`` plus the random-walk thickening margin.

    >>> k = random_kernels(6, generator=0, families={"random-walk": 1, "linear": 1, "defocus": 1},
    ...                    length_range=(5, 15))
    >>> k.shape[:2], bool(torch.allclose(k.sum((-2, -1)), torch.ones(6, 1)))
    (torch.Size([6, 1]), True)
    """
    generator = as_generator(generator)
    weights = {families: 1.0} if isinstance(families, str) else {str(k): float(v) for k, v in families.items()}
    unknown = sorted(set(weights) - set(KERNEL_FAMILIES))
    if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(
            f"kernel families must be among {', '.join(KERNEL_FAMILIES)} with non-negative weights summing "
            f"above 0, got {families!r}"
        )
    low, high = _check_length_range(length_range)
    if size is None:
        size = 2 * math.ceil(high) - 1 + 2 * math.ceil(3 * 0.8)
    names = list(weights)
    probabilities = torch.tensor([weights[n] for n in names], dtype=torch.float64)
    draw = torch.rand(batch, generator=generator, device=generator.device).cpu().double()
    choice = torch.searchsorted(torch.cumsum(probabilities / probabilities.sum(), 0), draw, right=True)
    choice = choice.clamp(max=len(names) - 1)
    out = torch.zeros(batch, 1, size, size, dtype=dtype, device=device if device is not None else generator.device)
    for number, name in enumerate(names):
        rows = (choice == number).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        count = int(rows.numel())
        if name == "trajectory":
            made = trajectory_kernels(count, generator=generator, size=size, length_range=(low, high))
        elif name == "random-walk":
            made = random_walk_kernels(count, generator=generator, size=size, length_range=(low, high))
        elif name == "linear":
            made = random_linear_kernels(count, generator=generator, size=size, length_range=(low, high))
        else:
            made = defocus_kernels(count, generator=generator, size=size, length_range=(low, max(low, high / 2)))
        out[rows.to(out.device)] = made.to(out)
    return out


def center_kernel(kernel: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Place a ``(Kh, Kw)`` kernel on an odd square canvas with its centre of mass within half a pixel
    of the centre pixel (an integer shift: values are not resampled), so blurring with it does not
    shift the image by more than half a pixel. All-zero border rows and columns are dropped first.

    Args:
        kernel: ``(Kh, Kw)`` non-negative, non-zero.
        size: canvas side (odd, large enough); default: the smallest.

    >>> k = torch.zeros(3, 4); k[0, 3] = 1.0
    >>> c = center_kernel(k)
    >>> c.shape, c[0, 0].item()
    (torch.Size([1, 1]), 1.0)
    """
    if kernel.ndim != 2:
        raise ValueError(f"center_kernel: expected a (Kh, Kw) kernel, got shape {tuple(kernel.shape)}")
    total = kernel.sum()
    if not float(total) > 0:
        raise KernelError(f"center_kernel: the kernel's sum must be positive, got {float(total):g}")
    rows_used = (kernel != 0).any(dim=1).nonzero().squeeze(1)
    cols_used = (kernel != 0).any(dim=0).nonzero().squeeze(1)
    kernel = kernel[int(rows_used[0]) : int(rows_used[-1]) + 1, int(cols_used[0]) : int(cols_used[-1]) + 1]
    rows = torch.arange(kernel.shape[0], dtype=torch.float64, device=kernel.device)
    cols = torch.arange(kernel.shape[1], dtype=torch.float64, device=kernel.device)
    weights = kernel.to(torch.float64)
    mass_y = int(torch.round((weights.sum(1) * rows).sum() / total.double()))
    mass_x = int(torch.round((weights.sum(0) * cols).sum() / total.double()))
    half = max(mass_y, kernel.shape[0] - 1 - mass_y, mass_x, kernel.shape[1] - 1 - mass_x)
    needed = 2 * half + 1
    if size is None:
        size = needed
    elif size < needed or size % 2 == 0:
        raise KernelError(f"center_kernel: size {size} must be odd and at least {needed} for this kernel")
    canvas = kernel.new_zeros(size, size)
    top, left = size // 2 - mass_y, size // 2 - mass_x
    canvas[top : top + kernel.shape[0], left : left + kernel.shape[1]] = kernel
    return canvas


# --------------------------------------------------------------------------------------------------
# Kernel files


def load_kernels(path: str | Path) -> list[torch.Tensor]:
    """Read every blur kernel in a file: a list of ``(Kh, Kw)`` float32 tensors, non-negative, summing to 1.

    - images (.png, .jpg, .tif, .bmp, .webp): one kernel; grey as is, colour as BT.601 luma (alpha
      ignored), 8- or 16-bit.
    - .npy: a 2-D array (one kernel) or a 3-D stack ``(N, Kh, Kw)`` (numpy's order: kernel first).
    - .mat, MATLAB v5 (``scipy.io.loadmat``) and v7.3 (HDF5, ``h5py``): the numeric arrays of the
      variables whose name contains ``kernel`` or ``psf`` (case-insensitive), or of all variables when
      none does; 2-D arrays are kernels, 3-D arrays are stacks along MATLAB's third dimension, cell
      arrays and structs are searched recursively in MATLAB's (column-major) order; scalars and
      empties are skipped. v7.3 files store arrays transposed; they are transposed back, so both
      versions give the orientation MATLAB shows (e.g. Levin et al.'s ``Levin09.mat``,
      ``kernels_12.mat``).

    Small negative values (estimation noise) are clipped to 0 before normalising.

    Raises:
        KernelError (naming the file): missing or unreadable file, unsupported type, no kernel inside,
            a kernel that is not finite or whose sum is not positive.

    >>> import tempfile, numpy
    >>> folder = tempfile.TemporaryDirectory()
    >>> numpy.save(folder.name + "/k.npy", numpy.ones((2, 3, 3)))
    >>> kernels = load_kernels(folder.name + "/k.npy")
    >>> [tuple(k.shape) for k in kernels], float(kernels[0].sum())
    ([(3, 3), (3, 3)], 1.0)
    >>> folder.cleanup()
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in KERNEL_FILE_EXTENSIONS:
        kinds = ", ".join(sorted(KERNEL_FILE_EXTENSIONS))
        kind = suffix or "(none)"
        raise KernelError(f"kernel file {str(path)!r}: unsupported type {kind!r}, expected one of {kinds}")
    if not path.is_file():
        raise KernelError(f"kernel file {str(path)!r} does not exist or is not a file")
    try:
        if suffix == ".npy":
            arrays = _arrays_from_npy(path)
        elif suffix == ".mat":
            arrays = _arrays_from_mat(path)
        else:
            arrays = [_array_from_image(path)]
    except KernelError:
        raise
    except ImageError as err:
        raise KernelError(str(err)) from err
    except Exception as err:  # numpy, scipy and h5py raise many types on corrupt files
        raise KernelError(f"cannot read kernel file {str(path)!r}: {one_line(err)}") from err
    if not arrays:
        raise KernelError(f"kernel file {str(path)!r} holds no kernel (no 2-D or 3-D numeric array)")
    return [_normalised_kernel(array, path, number) for number, array in enumerate(arrays)]


def load_kernel(path: str | Path, index: int = 0) -> torch.Tensor:
    """Kernel number ``index`` (negative counts from the end) of :func:`load_kernels` ``(path)``.

    >>> import tempfile, numpy
    >>> folder = tempfile.TemporaryDirectory()
    >>> numpy.save(folder.name + "/k.npy", numpy.eye(3))
    >>> [round(v, 4) for v in load_kernel(folder.name + "/k.npy").diagonal().tolist()]
    [0.3333, 0.3333, 0.3333]
    >>> folder.cleanup()
    """
    kernels = load_kernels(path)
    if not -len(kernels) <= index < len(kernels):
        raise KernelError(f"kernel file {str(path)!r} holds {len(kernels)} kernel(s), there is no index {index}")
    return kernels[index]


def _normalised_kernel(array: Any, path: Path, number: int) -> torch.Tensor:
    array = np.asarray(array, dtype=np.float64)
    where = f"kernel file {str(path)!r}, kernel {number}"
    if not np.isfinite(array).all():
        raise KernelError(f"{where}: has NaN or infinite values")
    total = float(array.sum())
    if not total > 0:
        raise KernelError(f"{where}: sum must be positive, got {total:g}")
    array = np.clip(array, 0, None)
    return torch.from_numpy((array / array.sum()).astype(np.float32))


def _is_numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "iuf"


def _kernels_in_array(array: np.ndarray) -> Iterator[np.ndarray]:
    """2-D arrays (not scalars) are kernels; 3-D arrays are stacks along the last (MATLAB) axis."""
    if array.ndim == 2 and array.size > 1:
        yield array
    elif array.ndim == 3:
        for index in range(array.shape[2]):
            yield array[:, :, index]


def _arrays_from_npy(path: Path) -> list[np.ndarray]:
    array = np.load(path, allow_pickle=False)
    if not _is_numeric(array) or array.ndim not in (2, 3):
        raise KernelError(
            f"kernel file {str(path)!r}: expected a numeric 2-D kernel or 3-D stack (N, Kh, Kw), "
            f"got {array.dtype} array of shape {array.shape}"
        )
    return [array] if array.ndim == 2 else list(array)


def _arrays_from_mat(path: Path) -> list[np.ndarray]:
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as file:
            variables = {name: file[name] for name in file if not name.startswith("#")}
            return _from_variables(variables, lambda value: list(_arrays_in_hdf5(file, value)))
    contents = scipy.io.loadmat(path)
    variables = {name: value for name, value in contents.items() if not name.startswith("__")}
    return _from_variables(variables, lambda value: list(_arrays_in_matlab5(value)))


def _from_variables(variables: dict[str, Any], collect) -> list[np.ndarray]:
    preferred = {name: v for name, v in variables.items() if "kernel" in name.lower() or "psf" in name.lower()}
    chosen = preferred or variables
    return [array for value in chosen.values() for array in collect(value)]


def _arrays_in_matlab5(value: Any) -> Iterator[np.ndarray]:
    if not isinstance(value, np.ndarray):
        return
    if value.dtype == object:  # cell array
        for item in value.flatten(order="F"):
            yield from _arrays_in_matlab5(item)
    elif value.dtype.names:  # struct array
        for item in value.flatten(order="F"):
            for field in value.dtype.names:
                yield from _arrays_in_matlab5(item[field])
    elif _is_numeric(value):
        yield from _kernels_in_array(value)


def _arrays_in_hdf5(file: h5py.File, node: Any) -> Iterator[np.ndarray]:
    if isinstance(node, h5py.Group):  # struct
        for name in node:
            yield from _arrays_in_hdf5(file, node[name])
        return
    if not isinstance(node, h5py.Dataset) or node.attrs.get("MATLAB_empty", 0):
        return
    matlab_class = node.attrs.get("MATLAB_class", b"")
    matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
    if matlab_class == "cell":
        # h5py shows MATLAB's dimensions reversed, so C order here is MATLAB's column-major order.
        for reference in node[()].flatten(order="C"):
            yield from _arrays_in_hdf5(file, file[reference])
    elif node.dtype.kind in "iuf" and matlab_class in _MATLAB_NUMERIC_CLASSES:
        yield from _kernels_in_array(np.asarray(node[()]).T)  # v7.3 (HDF5) stores arrays transposed


def _array_from_image(path: Path) -> np.ndarray:
    image, _ = read_image(path)
    if image.shape[0] >= 3:
        grey = sum(weight * image[channel] for channel, weight in enumerate(_LUMA))
    else:
        grey = image[0]
    return grey.double().numpy()


# --------------------------------------------------------------------------------------------------
# Convolution, noise, quantisation


def blur_with_kernels(
    images: torch.Tensor, kernels: torch.Tensor, *, border: str = "reflect", method: str = "auto"
) -> torch.Tensor:
    """Convolve each image with its kernel: ``(B, C, H, W)`` -> ``(B, C, H, W)``, same size.

    A true convolution, ``out[y, x] = sum_ij k[i, j] * img[y - (i - ci), x - (j - cj)]`` with the kernel
    centre ``(ci, cj) = (Kh // 2, Kw // 2)``: the kernel is flipped relative to ``conv2d`` (which
    correlates), so an off-centre kernel moves the image towards where its mass is. All channels share
    the image's kernel.

    Args:
        images: ``(B, C, H, W)``.
        kernels: ``(B, 1, Kh, Kw)`` (one per image) or ``(1, 1, Kh, Kw)`` (shared); moved to the images'
            device and dtype.
        border: how the image is extended beyond its edges: ``"reflect"`` (mirror without repeating
            the edge pixel: ..., x2, x1 | x0, x1, ...), ``"replicate"``, ``"circular"``, ``"zero"``.
            Any kernel size works (the reflection repeats for kernels larger than the image).
        method: ``"direct"`` (``conv2d``), ``"fft"`` (``torch.fft``), or ``"auto"``: FFT when
            ``Kh * Kw >= FFT_MIN_KERNEL_PIXELS``.

    >>> image = torch.zeros(1, 1, 5, 5); image[0, 0, 2, 2] = 1
    >>> kernel = torch.zeros(1, 1, 3, 3); kernel[0, 0, 1, 2] = 1   # mass one pixel right of centre
    >>> blur_with_kernels(image, kernel)[0, 0, 2].tolist()          # the dot moves right
    [0.0, 0.0, 0.0, 1.0, 0.0]
    """
    if images.ndim != 4:
        raise ValueError(f"blur_with_kernels: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if kernels.ndim != 4 or kernels.shape[1] != 1 or kernels.shape[0] not in (1, images.shape[0]):
        raise ValueError(
            f"blur_with_kernels: kernels must be (B, 1, Kh, Kw) or (1, 1, Kh, Kw) for {images.shape[0]} images, "
            f"got shape {tuple(kernels.shape)}"
        )
    if border not in BORDERS:
        raise ValueError(f"blur_with_kernels: border must be one of {BORDERS}, got {border!r}")
    if method not in ("auto", "direct", "fft"):
        raise ValueError(f"blur_with_kernels: method must be 'auto', 'direct' or 'fft', got {method!r}")
    batch, channels, height, width = images.shape
    kernel_h, kernel_w = kernels.shape[-2:]
    kernels = kernels.to(device=images.device, dtype=images.dtype)
    # Rows before = Kh - 1 - ci and after = ci (the same for odd Kh).
    rows, cols = (kernel_h - 1 - kernel_h // 2, kernel_h // 2), (kernel_w - 1 - kernel_w // 2, kernel_w // 2)
    padded = _pad(images, rows, cols, border)
    if method == "auto":
        method = "fft" if kernel_h * kernel_w >= FFT_MIN_KERNEL_PIXELS else "direct"
    if method == "direct":
        weight = kernels.flip(-2, -1)  # conv2d correlates; the flip makes it a convolution
        if kernels.shape[0] == 1:
            out = F.conv2d(padded.reshape(batch * channels, 1, *padded.shape[-2:]), weight)
        else:
            weight = weight.repeat_interleave(channels, dim=0)
            out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight, groups=batch * channels)
        return out.view(batch, channels, height, width)
    # FFT: circular convolution on a size >= the padded image; the window [Kh-1, Kh-1+H) never wraps.
    work = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    shape = (_fft_size(padded.shape[-2]), _fft_size(padded.shape[-1]))
    spectrum = torch.fft.rfft2(padded.to(work), s=shape) * torch.fft.rfft2(kernels.to(work), s=shape)
    full = torch.fft.irfft2(spectrum, s=shape)
    return full[..., kernel_h - 1 : kernel_h - 1 + height, kernel_w - 1 : kernel_w - 1 + width].to(images.dtype)


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast sizes for pocketfft / cuFFT)."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35
            while candidate < n:
                candidate *= 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _pad(images: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], border: str) -> torch.Tensor:
    if border == "zero":
        return F.pad(images, (cols[0], cols[1], rows[0], rows[1]))
    height, width = images.shape[-2:]
    row_index = _border_index(height, *rows, border, images.device)
    col_index = _border_index(width, *cols, border, images.device)
    return images.index_select(-2, row_index).index_select(-1, col_index)


def _border_index(n: int, before: int, after: int, border: str, device: torch.device) -> torch.Tensor:
    """Source index of each position of a length-n axis extended by ``before``/``after`` positions."""
    index = torch.arange(-before, n + after, device=device)
    if border == "replicate":
        return index.clamp(0, n - 1)
    if border == "circular":
        return index % n
    period = max(2 * n - 2, 1)  # reflect: the mirrored signal repeats every 2n - 2 samples
    folded = index % period
    return torch.where(folded < n, folded, period - folded)


def add_noise(
    images: torch.Tensor,
    *,
    generator: torch.Generator | int,
    gaussian_sigma: float | torch.Tensor = 0.0,
    poisson_peak: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sensor noise: Poisson shot noise, then additive Gaussian read noise, then clipping to [0, 1].

    Shot noise: ``Poisson(x * peak) / peak`` (``peak`` = photon count of a white pixel; smaller is
    noisier). Read noise: ``+ sigma * N(0, 1)``. Both may be per image: a ``(B,)`` tensor for a
    ``(B, C, H, W)`` batch. Random numbers are drawn on the generator's device.

    >>> x = torch.full((1, 1, 64, 64), 0.5)
    >>> y = add_noise(x, generator=0, gaussian_sigma=0.1)
    >>> round(float((y - x).std()), 1)
    0.1
    """
    generator = as_generator(generator)
    noisy = images
    if poisson_peak is not None:
        peak = _broadcast_level(poisson_peak, images)
        if bool((torch.as_tensor(peak) <= 0).any()):
            raise ValueError(f"add_noise: poisson_peak must be positive, got {poisson_peak!r}")
        rates = (images.clamp_min(0) * peak).to(device=generator.device, dtype=torch.float32)
        noisy = torch.poisson(rates, generator=generator).to(device=images.device, dtype=images.dtype) / peak
    sigma = _broadcast_level(gaussian_sigma, images)
    if isinstance(sigma, torch.Tensor) or sigma != 0:
        noisy = noisy + sigma * _randn(images.shape, generator, images.device, images.dtype)
    return noisy.clamp(0, 1)


def _broadcast_level(level: float | torch.Tensor, images: torch.Tensor) -> float | torch.Tensor:
    if not isinstance(level, torch.Tensor):
        return float(level)
    level = level.to(device=images.device, dtype=images.dtype)
    if level.ndim == 1 and images.ndim == 4:
        return level.view(-1, 1, 1, 1)
    return level


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round to the nearest of the 256 levels ``k / 255`` (after clipping to [0, 1]), like saving as
    an 8-bit image.

    >>> quantize_8bit(torch.tensor([0.0, 0.3, 1.2])).mul(255).tolist()
    [0.0, 76.0, 255.0]
    """
    return torch.round(images.clamp(0, 1) * 255) / 255


def _camera_options(
    batch: int,
    generator: torch.Generator,
    gamma,
    highlight_probability: float,
    highlight_gain,
    jpeg_quality,
    jpeg_probability: float,
    device: torch.device,
) -> dict[str, Any]:
    """Per-image draws of the camera pipeline (:mod:`adeblur.data.camera`): gamma, highlight gain (1 =
    none) and JPEG quality (None where an image is not compressed)."""
    out: dict[str, Any] = {"gamma": _per_image(gamma, batch, generator, "gamma"), "gain": None, "quality": None}
    if isinstance(out["gamma"], torch.Tensor):
        out["gamma"] = out["gamma"].to(device)
    if highlight_probability > 0:
        gain = _per_image(highlight_gain, batch, generator, "highlight_gain")
        gain = torch.as_tensor(gain, dtype=torch.float64, device=generator.device).expand(batch)
        applied = torch.rand(batch, generator=generator, device=generator.device) < highlight_probability
        out["gain"] = torch.where(applied, gain, torch.ones_like(gain)).to(device)
    if jpeg_quality is not None and jpeg_probability > 0:
        quality = _per_image(jpeg_quality, batch, generator, "jpeg_quality")
        quality = torch.as_tensor(quality, dtype=torch.float64, device=generator.device).expand(batch).round()
        applied = torch.rand(batch, generator=generator, device=generator.device) < jpeg_probability
        out["quality"] = (quality.to(device), applied.to(device))
    return out


def _linearise(images: torch.Tensor, camera: Mapping[str, Any]) -> torch.Tensor:
    """Encoded -> linear light, with the highlights boosted where the draw says so."""
    linear = to_linear(images, camera["gamma"])
    if camera["gain"] is not None:
        linear = boost_highlights(linear, images, camera["gain"].to(images.dtype))
    return linear


def _compress(images: torch.Tensor, camera: Mapping[str, Any]) -> torch.Tensor:
    """JPEG on the images the draw chose (the others unchanged)."""
    if camera["quality"] is None:
        return images
    quality, applied = camera["quality"]
    if not bool(applied.any()):
        return images
    rows = applied.nonzero().squeeze(1)
    out = images.clone()
    out[rows] = jpeg_compress(images[rows], quality[rows].to(images.dtype))
    return out


def _finish(
    sharp: torch.Tensor,
    blur: torch.Tensor,
    generator: torch.Generator,
    noise_sigma,
    poisson_peak,
    quantize: bool,
    camera: Mapping[str, Any] | None = None,
    compress_sharp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise on the blurred image only (the sharp target stays clean), then 8-bit quantisation of both,
    then JPEG of the blurred image (and of the sharp one with ``compress_sharp``)."""
    batch = blur.shape[0]
    sigma = _per_image(noise_sigma, batch, generator, "noise_sigma")
    peak = None if poisson_peak is None else _per_image(poisson_peak, batch, generator, "poisson_peak")
    if peak is not None or isinstance(sigma, torch.Tensor) or sigma != 0:
        blur = add_noise(blur, generator=generator, gaussian_sigma=sigma, poisson_peak=peak)
    if quantize:
        sharp, blur = quantize_8bit(sharp), quantize_8bit(blur)
    if camera is not None:
        blur = _compress(blur, camera)
        if compress_sharp:
            sharp = _compress(sharp, camera)
    return sharp, blur


# --------------------------------------------------------------------------------------------------
# Global blur


def synthesize_global_blur(
    sharp: torch.Tensor,
    *,
    generator: torch.Generator | int,
    kernels: torch.Tensor | Sequence[torch.Tensor] | str | Path | Sequence[str | Path] | None = None,
    kernel_model: str | Mapping[str, float] = "trajectory",
    length_range: tuple[float, float] = (7, 65),
    kernel_size: int | None = None,
    border: str = "reflect",
    gamma: float | tuple[float, float] = 2.2,
    noise_sigma: float | tuple[float, float] = 0.0,
    poisson_peak: float | tuple[float, float] | None = None,
    quantize: bool = True,
    highlight_probability: float = 0.0,
    highlight_gain: float | tuple[float, float] = (2.0, 8.0),
    jpeg_quality: float | tuple[float, float] | None = None,
    jpeg_probability: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Camera-shake blur of a sharp batch: one kernel per image, ``blur = sharp * kernel`` (+ noise).

    The convolution runs on linear intensities: ``blur = (sharp^gamma * k)^(1/gamma)`` (gamma 2.2
    approximates a camera response, as GoPro's frame averaging did; ``gamma=1`` blurs the stored
    values; a (low, high) range draws one gamma per image). With ``highlight_probability`` > 0, that share
    of the images gets its near-white pixels boosted by ``highlight_gain`` before the blur
    (:func:`~adeblur.data.camera.boost_highlights`), so their streaks saturate. Noise (``noise_sigma``,
    ``poisson_peak``: a number or a (low, high) range drawn per image; see :func:`add_noise`) goes on the
    blurred image only; with ``quantize`` both images are rounded to 8 bits; with ``jpeg_quality`` (a
    number or a (low, high) range) a share ``jpeg_probability`` of the blurred images is JPEG-compressed
    (:func:`~adeblur.data.camera.jpeg_compress`), the sharp targets stay as they are.

    Args:
        sharp: ``(B, C, H, W)`` in [0, 1].
        generator: random source (:class:`torch.Generator` or int seed).
        kernels: a bank to draw from uniformly per image (``(N, Kh, Kw)``, ``(N, 1, Kh, Kw)`` or a list
            of ``(Kh, Kw)``), or kernel files (a path or a list of paths, read by :func:`load_kernels`);
            each is normalised and centred on its centre of mass (:func:`center_kernel`). ``None``:
            generate with ``kernel_model``.
        kernel_model: a family of :data:`KERNEL_FAMILIES` (``"trajectory"``: :func:`trajectory_kernels`,
            ``"random-walk"``: :func:`random_walk_kernels`, ``"linear"``: :func:`random_linear_kernels`,
            ``"defocus"``: :func:`defocus_kernels`) or ``{family: weight}`` (:func:`random_kernels`),
            support within ``length_range`` pixels.
        kernel_size: canvas side K of the returned kernels (default: the smallest that fits).
        border: border mode of :func:`blur_with_kernels`.

    Returns:
        ``{"sharp": (B, C, H, W), "blur": (B, C, H, W), "kernel": (B, 1, K, K)}``.

    >>> out = synthesize_global_blur(torch.rand(2, 3, 32, 32), generator=0, length_range=(5, 9))
    >>> out["blur"].shape, out["kernel"].shape[:2]
    (torch.Size([2, 3, 32, 32]), torch.Size([2, 1]))
    """
    _check_batch(sharp, "sharp")
    generator = as_generator(generator)
    batch = sharp.shape[0]
    if kernels is not None:
        bank = _kernel_bank(_read_kernel_files(kernels), kernel_size)
        choice = torch.randint(bank.shape[0], (batch,), generator=generator, device=generator.device)
        kernel = bank[choice.to(bank.device)].unsqueeze(1)
    elif kernel_model == "trajectory":
        kernel = trajectory_kernels(batch, generator=generator, size=kernel_size, length_range=length_range)
    elif kernel_model == "linear":
        kernel = random_linear_kernels(batch, generator=generator, length_range=length_range, size=kernel_size)
    elif isinstance(kernel_model, Mapping) or kernel_model in KERNEL_FAMILIES:
        kernel = random_kernels(
            batch, generator=generator, families=kernel_model, length_range=length_range, size=kernel_size
        )
    else:
        raise ConfigError(f"kernel_model must be one of {', '.join(KERNEL_FAMILIES)} or a mapping, got {kernel_model!r}")
    kernel = kernel.to(device=sharp.device, dtype=sharp.dtype)
    camera = _camera_options(
        batch, generator, gamma, highlight_probability, highlight_gain, jpeg_quality, jpeg_probability, sharp.device
    )
    linear = _linearise(sharp, camera)
    if camera["gain"] is not None:
        sharp = from_linear(linear, camera["gamma"])  # near-white pixels of boosted images become white
    blur = from_linear(blur_with_kernels(linear, kernel, border=border), camera["gamma"])
    sharp, blur = _finish(sharp, blur, generator, noise_sigma, poisson_peak, quantize, camera)
    return {"sharp": sharp, "blur": blur, "kernel": kernel}


def _read_kernel_files(kernels):
    """A kernel bank as given, or the kernels of kernel files: a path or a list of paths, each a file
    (:func:`load_kernels`) or a folder (its kernel files, sorted by name); ``~`` and ``$VARIABLES`` are
    expanded, as in training configs."""
    if isinstance(kernels, (str, Path)):
        kernels = [kernels]
    if not (isinstance(kernels, (list, tuple)) and kernels and all(isinstance(k, (str, Path)) for k in kernels)):
        return kernels
    bank = []
    for item in kernels:
        path = Path(os.path.expandvars(os.path.expanduser(str(item))))
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in KERNEL_FILE_EXTENSIONS)
            if not files:
                raise KernelError(f"no kernel files in {str(path)!r}")
        else:
            files = [path]
        bank += [kernel for file in files for kernel in load_kernels(file)]
    return bank


def _kernel_bank(kernels: torch.Tensor | Sequence[torch.Tensor], size: int | None) -> torch.Tensor:
    if isinstance(kernels, torch.Tensor):
        if kernels.ndim == 4 and kernels.shape[1] == 1:
            kernels = kernels[:, 0]
        if kernels.ndim != 3:
            shape = tuple(kernels.shape)
            raise ValueError(f"kernels must be (N, Kh, Kw), (N, 1, Kh, Kw) or a list of (Kh, Kw), got {shape}")
        kernels = list(kernels)
    if len(kernels) == 0:
        raise KernelError("the kernel bank is empty")
    normalised = []
    for number, kernel in enumerate(kernels):
        kernel = torch.as_tensor(kernel)
        if kernel.ndim != 2 or not bool(torch.isfinite(kernel).all()) or bool((kernel < 0).any()):
            raise KernelError(f"kernel {number} of the bank must be a finite non-negative (Kh, Kw) array")
        if not float(kernel.sum()) > 0:
            raise KernelError(f"kernel {number} of the bank sums to {float(kernel.sum()):g}, not a positive number")
        normalised.append(center_kernel(kernel / kernel.sum()))
    side = max(k.shape[0] for k in normalised) if size is None else size
    return torch.stack([center_kernel(k, side) for k in normalised])


def _check_batch(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a floating-point (B, C, H, W) tensor, got {shape}")


# --------------------------------------------------------------------------------------------------
# Local blur


def composite_moving_layers(
    background: torch.Tensor,
    colors: torch.Tensor,
    alphas: torch.Tensor,
    velocity: torch.Tensor,
    acceleration: torch.Tensor,
    *,
    num_subframes: int | None = None,
    mask_threshold: float = 0.01,
) -> dict[str, torch.Tensor]:
    """Render layers moving over a static background during the exposure (deterministic).

    Layer j of image b is ``colors[b, j]`` with opacity ``alphas[b, j]`` at mid-exposure; it translates
    by ``p(t) = velocity * t + acceleration * t^2`` pixels, ``t`` in ``[-1/2, 1/2]``. Sub-frame n
    (``t_n = -1/2 + n / (N - 1)``, n = 0..N-1) warps every layer by ``p(t_n)`` (bilinear, transparent
    outside the frame) and composites them back to front over the background (layer J-1 in front,
    premultiplied "over"). ``blur`` is the mean of the N sub-frames, ``sharp`` the composite at
    ``t = 0``. ``N = None`` picks the smallest N with consecutive sub-frames at most 1 px apart.

    The mean is computed without rendering the sub-frames: where at most one layer ever passes, a
    pixel's mean is ``bg * (1 - mean alpha) + mean (alpha color)``, and the means over time of a
    translating layer are one FFT convolution with its splatted trajectory; only pixels that several
    layers sweep are rendered sub-frame by sub-frame (exact occlusion). The result equals explicit
    rendering up to float rounding (a time-averaged coverage below 1e-5 in float32, 1e-12 in float64,
    counts as none).

    Args:
        background: ``(B, C, H, W)``.
        colors: ``(B, J, C, H, W)`` layer colours (not premultiplied).
        alphas: ``(B, J, 1, H, W)`` opacities in [0, 1]; an all-zero layer is skipped.
        velocity, acceleration: ``(B, J, 2)`` in pixels, (x, y) with y downwards.
        num_subframes: N (>= 2), or None for automatic.
        mask_threshold: see Returns.

    Returns:
        dict with ``sharp``, ``blur`` ``(B, C, H, W)``; ``mask`` ``(B, 1, H, W)`` in {0, 1}: 1 where the
        layers' coverage summed over layers exceeds ``mask_threshold`` on average over the exposure or
        at mid-exposure (the moving objects and their smear; outside it ``blur`` differs from ``sharp``
        by at most about ``2 * mask_threshold``); ``displacement_start`` / ``displacement_end``
        ``(B, 2, H, W)``: ``p(-1/2)`` / ``p(1/2)`` of the front-most layer with alpha > 0.5 at
        mid-exposure, 0 on the background.

    >>> bg = torch.zeros(1, 1, 16, 16)
    >>> alpha = torch.zeros(1, 1, 1, 16, 16); alpha[..., 6:10, 6:10] = 1
    >>> out = composite_moving_layers(bg, torch.ones(1, 1, 1, 16, 16), alpha,
    ...                               torch.tensor([[[4.0, 0.0]]]), torch.zeros(1, 1, 2))
    >>> out["displacement_end"][0, :, 8, 8].tolist(), round(float(out["blur"].sum()), 3)
    ([2.0, 0.0], 16.0)
    """
    _check_batch(background, "background")
    batch, channels, height, width = background.shape
    if colors.ndim != 5 or colors.shape[:1] + colors.shape[2:] != background.shape:
        shapes = f"{tuple(background.shape)}, got {tuple(colors.shape)}"
        raise ValueError(f"colors must be (B, J, C, H, W) matching the background {shapes}")
    layers = colors.shape[1]
    if alphas.shape != (batch, layers, 1, height, width):
        expected = (batch, layers, 1, height, width)
        raise ValueError(f"alphas must be (B, J, 1, H, W) = {expected}, got {tuple(alphas.shape)}")
    for name, value in (("velocity", velocity), ("acceleration", acceleration)):
        if value.shape != (batch, layers, 2):
            raise ValueError(f"{name} must be (B, J, 2) = {(batch, layers, 2)}, got {tuple(value.shape)}")
    device, dtype = background.device, background.dtype
    work = _work_dtype(dtype)  # half precision inputs are rendered in float32
    velocity = velocity.to(device=device, dtype=torch.float64 if device.type == "cpu" else torch.float32)
    acceleration = acceleration.to(velocity)
    background = background.to(work)
    colors, alphas = colors.to(device=device, dtype=work), alphas.to(device=device, dtype=work)

    if num_subframes is None:  # |dp/dt| = |v + 2 a t| <= |v| + |a| on [-1/2, 1/2]
        peak_speed = float((velocity.norm(dim=-1) + acceleration.norm(dim=-1)).max()) if layers else 0.0
        num_subframes = max(2, math.ceil(peak_speed) + 1)
    if num_subframes < 2:
        raise ValueError(f"num_subframes must be >= 2, got {num_subframes}")
    times = torch.linspace(-0.5, 0.5, num_subframes, dtype=velocity.dtype, device=device)
    t = times[:, None]
    positions = velocity[:, :, None, :] * t + acceleration[:, :, None, :] * t**2  # (B, J, N, 2)

    premultiplied = torch.cat([colors * alphas, alphas], dim=2)  # (B, J, C + 1, H, W)
    sharp = background
    for layer in range(layers):
        sharp = premultiplied[:, layer, :channels] + (1 - alphas[:, layer]) * sharp

    means = torch.zeros_like(premultiplied)
    active = alphas.flatten(2).amax(dim=-1) > 0  # (B, J)
    if bool(active.any()):
        paths = positions[active]  # (P, N, 2)
        side = _canvas_size(float(paths.abs().amax()), None, "composite_moving_layers")
        path_kernels = _splat(paths + side // 2, side).unsqueeze(1)
        means[active] = blur_with_kernels(premultiplied[active], path_kernels.to(work), border="zero")
    means = means * (means[:, :, channels:] > _SWEEP_EPSILON[work])  # FFT round-off where no layer passed
    mean_color, mean_alpha = means[:, :, :channels], means[:, :, channels:]
    blur = background * (1 - mean_alpha.sum(dim=1)) + mean_color.sum(dim=1)
    overlap = (mean_alpha > 0).sum(dim=1) >= 2  # (B, 1, H, W)
    if bool(overlap.any()):
        _render_overlap(blur, background, premultiplied, positions, overlap[:, 0])

    coverage = torch.maximum(mean_alpha.sum(dim=1), alphas.sum(dim=1))
    mask = coverage > mask_threshold
    start = torch.zeros(batch, 2, height, width, dtype=work, device=device)
    end = torch.zeros_like(start)
    for layer in range(layers):
        front = alphas[:, layer] > 0.5
        start = torch.where(front, positions[:, layer, 0, :, None, None].to(work), start)
        end = torch.where(front, positions[:, layer, -1, :, None, None].to(work), end)
    out = {"sharp": sharp, "blur": blur, "mask": mask, "displacement_start": start, "displacement_end": end}
    return {key: value.to(dtype) for key, value in out.items()}


def _render_overlap(
    blur: torch.Tensor,
    background: torch.Tensor,
    premultiplied: torch.Tensor,
    positions: torch.Tensor,
    overlap: torch.Tensor,
) -> None:
    """Overwrite ``blur`` at the ``overlap`` pixels ``(B, H, W)`` with the explicit mean of the sub-frames.

    Each image's overlap pixels are packed into a row; every layer is sampled there at each sub-frame
    with ``grid_sample`` (bilinear, transparent outside the frame: the interpolation the splatted
    trajectory convolution integrates) and composited back to front."""
    batch, layers, planes, height, width = premultiplied.shape
    channels = planes - 1
    num_subframes = positions.shape[2]
    image, row, col = overlap.nonzero(as_tuple=True)
    counts = torch.bincount(image, minlength=batch)
    slot = torch.arange(image.numel(), device=image.device) - (counts.cumsum(0) - counts)[image]
    longest = int(counts.max())
    # grid_sample coordinates (align_corners=False): pixel centre x sits at (2x + 1) / W - 1.
    grid_x = torch.full((batch, longest), -2.0, dtype=blur.dtype, device=blur.device)  # padding: off-frame
    grid_y = torch.full_like(grid_x, -2.0)
    grid_x[image, slot] = (2 * col.to(blur.dtype) + 1) / width - 1
    grid_y[image, slot] = (2 * row.to(blur.dtype) + 1) / height - 1
    grid_step = torch.tensor([2 / width, 2 / height], dtype=blur.dtype, device=blur.device)
    packed_background = torch.zeros(batch, channels, longest, 1, dtype=blur.dtype, device=blur.device)
    packed_background[image, :, slot, 0] = background[image, :, row, col]
    used = [layer for layer in range(layers) if bool(premultiplied[:, layer, channels].any())]
    total = torch.zeros(batch, channels, longest, dtype=blur.dtype, device=blur.device)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // (batch * planes * longest))
    for first in range(0, num_subframes, chunk):
        shift = positions[:, :, first : first + chunk].to(blur.dtype) * grid_step  # (B, J, n, 2)
        frame = packed_background
        for layer in used:
            x = grid_x[:, :, None] - shift[:, layer, None, :, 0]  # (B, L, n)
            y = grid_y[:, :, None] - shift[:, layer, None, :, 1]
            grid = torch.stack([x, y], dim=-1)
            sample = F.grid_sample(premultiplied[:, layer], grid, padding_mode="zeros", align_corners=False)
            frame = sample[:, :channels] + (1 - sample[:, channels:]) * frame  # (B, C, L, n)
        total += frame.sum(dim=-1)
    blur[image, :, row, col] = total[image, :, slot] / num_subframes


def synthesize_local_blur(
    background: torch.Tensor,
    *,
    generator: torch.Generator | int,
    object_source: torch.Tensor | None = None,
    num_objects: int | tuple[int, int] = (1, 3),
    object_size: tuple[float, float] = (0.08, 0.25),
    max_displacement: float = 24.0,
    min_displacement: float = 2.0,
    max_acceleration: float = 0.5,
    num_subframes: int | None = None,
    mask_threshold: float = 0.01,
    gamma: float | tuple[float, float] = 2.2,
    noise_sigma: float | tuple[float, float] = 0.0,
    poisson_peak: float | tuple[float, float] | None = None,
    quantize: bool = True,
    highlight_probability: float = 0.0,
    highlight_gain: float | tuple[float, float] = (2.0, 8.0),
    jpeg_quality: float | tuple[float, float] | None = None,
    jpeg_probability: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Local motion blur (the ReLoBlur case): objects moving over a static background during the exposure.

    Objects: per image, ``num_objects`` random smooth blobs, placed fully inside the frame at
    mid-exposure, in random depth order. A blob is an ellipse (aspect 0.5..1, random rotation) whose
    radius is modulated by the 2nd to 4th harmonics (amplitude <= 0.12 each), with a 1-pixel
    anti-aliased edge. Its texture is the window of ``object_source`` around another random point
    where the blob fits, so objects carry natural texture that differs from what they cover.

    Motion: ``p(t) = v t + a t^2``, t in [-1/2, 1/2], in a random direction, with
    ``|a| / (2 |v|) <= max_acceleration``, scaled so that ``max(|p(-1/2)|, |p(1/2)|)`` is uniform in
    ``[min_displacement, max_displacement]``. Rendering and displacements are those of
    :func:`composite_moving_layers`, on linear intensities (``x^gamma``).

    Mask: :func:`composite_moving_layers`' (the objects and their smear: coverage above
    ``mask_threshold``, averaged over the exposure or at mid-exposure) plus every pixel where blur and
    sharp differ by more than 0.5/255 in some channel (gamma encoding magnifies faint smear tails on
    dark backgrounds). Outside it the blurred image equals the sharp one to 0.5/255 (1/255 after
    quantisation, before noise).

    Args:
        background: ``(B, C, H, W)`` in [0, 1], the static scene.
        generator: random source (:class:`torch.Generator` or int seed).
        object_source: ``(B, C, H, W)`` textures of the objects; default: the background itself (pass
            another image, e.g. the batch rolled by one, for objects from other scenes).
        num_objects: N or an inclusive (low, high) range, per image.
        object_size: (low, high) blob radius as fractions of ``min(H, W)``.
        max_displacement, min_displacement: pixels, see Motion.
        max_acceleration: bound on ``|a| / (2 |v|)`` (0 = constant velocity).
        num_subframes: N sub-frames; default: consecutive ones at most 1 px apart.
        mask_threshold: coverage threshold of the mask.
        gamma: exponent of the linearisation (1 = average the stored values; a (low, high) range: one
            per image).
        noise_sigma, poisson_peak: sensor noise on the blurred image only (:func:`add_noise`; a number or
            a (low, high) range per image). Keep it 0 for models that copy sharp regions through (M2AENet).
        quantize: round both images to 8 bits.
        highlight_probability, highlight_gain: saturated highlights, as :func:`synthesize_global_blur`
            (background and objects boosted alike).
        jpeg_quality, jpeg_probability: JPEG as :func:`synthesize_global_blur`, but of both images, so the
            static regions stay identical: a pair shot by one camera, as ReLoBlur's.

    Returns:
        ``{"sharp", "blur": (B, C, H, W), "mask": (B, 1, H, W), "displacement_start",
        "displacement_end": (B, 2, H, W)}``; the displacements satisfy M2AENet's Eq. 4: quadratic
        interpolation through (-1/2, start), (0, 0), (1/2, end) reproduces ``p(t)``.

    >>> out = synthesize_local_blur(torch.rand(1, 3, 32, 32), generator=0, num_objects=1)
    >>> bool(out["mask"].any()), bool((out["displacement_end"] != 0).any())
    (True, True)
    """
    _check_batch(background, "background")
    generator = as_generator(generator)
    batch = background.shape[0]
    device, dtype = background.device, background.dtype
    work = _work_dtype(dtype)
    if object_source is None:
        object_source = background
    elif object_source.shape != background.shape:
        shapes = f"{tuple(background.shape)}, got {tuple(object_source.shape)}"
        raise ValueError(f"object_source must have the background's shape {shapes}")
    fewest, most = (num_objects, num_objects) if isinstance(num_objects, int) else tuple(int(n) for n in num_objects)
    if not 0 <= fewest <= most:
        raise ValueError(f"num_objects must be N or (low, high) with 0 <= low <= high, got {num_objects!r}")
    if not 0 <= min_displacement <= max_displacement:
        raise ValueError(f"need 0 <= min_displacement <= max_displacement, got {min_displacement}, {max_displacement}")

    count = torch.randint(fewest, most + 1, (batch,), generator=generator, device=generator.device).to(device)
    present = torch.arange(most, device=device) < count[:, None]  # (B, J)
    camera = _camera_options(
        batch, generator, gamma, highlight_probability, highlight_gain, jpeg_quality, jpeg_probability, device
    )
    gamma = camera["gamma"]
    colors, alphas = _blob_layers(_linearise(object_source, camera), most, object_size, generator, work)
    alphas = (alphas * present[:, :, None, None, None]).to(dtype)
    velocity, acceleration = _quadratic_motion(
        batch, most, min_displacement, max_displacement, max_acceleration, generator
    )

    out = composite_moving_layers(
        _linearise(background, camera),
        colors,
        alphas,
        velocity,
        acceleration,
        num_subframes=num_subframes,
        mask_threshold=mask_threshold,
    )
    sharp, blur = from_linear(out["sharp"], gamma), from_linear(out["blur"], gamma)
    # Gamma encoding magnifies faint smear tails on dark backgrounds: mark every visible difference.
    visible = (blur - sharp).abs().amax(dim=1, keepdim=True) > 0.5 / 255
    mask = torch.maximum(out["mask"], visible.to(dtype))
    sharp, blur = _finish(sharp, blur, generator, noise_sigma, poisson_peak, quantize, camera, compress_sharp=True)
    return {**out, "sharp": sharp, "blur": blur, "mask": mask}


def _blob_layers(
    source: torch.Tensor, layers: int, size_range, generator: torch.Generator, work: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random soft-edged blobs inside the frame, textured from ``source``: colours ``(B, J, C, H, W)``
    and alphas ``(B, J, 1, H, W)``. A blob is an ellipse with harmonic wiggles; its texture is the
    ``source`` window around a random other point where the blob fits (an integer shift, no resampling)."""
    batch, _, height, width = source.shape
    device = source.device
    low, high = _range(size_range, "object_size")
    shape = (batch, layers)
    radius = _uniform(low, high, shape, generator, device, work) * min(height, width)
    aspect = _uniform(0.5, 1.0, shape, generator, device, work)
    rotation = _uniform(0, 2 * math.pi, shape, generator, device, work)
    amplitude = _uniform(0, 0.12, (*shape, 3), generator, device, work)  # harmonics 2, 3, 4
    phase = _uniform(0, 2 * math.pi, (*shape, 3), generator, device, work)
    reach = radius * (1 + amplitude.sum(-1)) + 1  # farthest boundary point, plus the soft edge

    def fitting_points() -> tuple[torch.Tensor, torch.Tensor]:  # where a blob of this reach fits
        margin_x = torch.minimum(reach, torch.tensor((width - 1) / 2, dtype=work, device=device))
        margin_y = torch.minimum(reach, torch.tensor((height - 1) / 2, dtype=work, device=device))
        x = margin_x + _rand(shape, generator, device, work) * (width - 1 - 2 * margin_x)
        y = margin_y + _rand(shape, generator, device, work) * (height - 1 - 2 * margin_y)
        return x, y

    centre_x, centre_y = fitting_points()
    texture_x, texture_y = fitting_points()

    dx = torch.arange(width, device=device, dtype=work) - centre_x[..., None, None]
    dy = torch.arange(height, device=device, dtype=work)[:, None] - centre_y[..., None, None]
    cos_r, sin_r = torch.cos(rotation)[..., None, None], torch.sin(rotation)[..., None, None]
    along, across = dx * cos_r + dy * sin_r, -dx * sin_r + dy * cos_r
    angle = torch.atan2(across, along)
    distance = torch.sqrt(along**2 + across**2)
    aspect = aspect[..., None, None]
    ellipse = aspect / torch.sqrt((aspect * torch.cos(angle)) ** 2 + torch.sin(angle) ** 2)  # unit ellipse radius
    amplitude, phase = amplitude[..., None, None], phase[..., None, None]
    wiggle = 1 + sum(amplitude[..., k, :, :] * torch.cos((k + 2) * angle + phase[..., k, :, :]) for k in range(3))
    alphas = (radius[..., None, None] * ellipse * wiggle - distance + 0.5).clamp(0, 1).unsqueeze(2)

    shift_x = torch.round(texture_x - centre_x).long()
    shift_y = torch.round(texture_y - centre_y).long()
    rows = (torch.arange(height, device=device) + shift_y[..., None]).clamp(0, height - 1)  # (B, J, H)
    cols = (torch.arange(width, device=device) + shift_x[..., None]).clamp(0, width - 1)  # (B, J, W)
    images = torch.arange(batch, device=device)[:, None, None, None]
    colors = source[images, :, rows[..., :, None], cols[..., None, :]].permute(0, 1, 4, 2, 3)  # (B, J, C, H, W)
    return colors, alphas


def _quadratic_motion(
    batch: int, layers: int, smallest: float, largest: float, max_acceleration: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (v, a) ``(B, J, 2)`` with ``max(|p(-1/2)|, |p(1/2)|)`` uniform in [smallest, largest]."""
    gdev = generator.device
    work = torch.float64 if gdev.type == "cpu" else torch.float32
    shape = (batch, layers)
    heading = _uniform(0, 2 * math.pi, shape, generator, gdev, work)
    bend = _uniform(0, max_acceleration, shape, generator, gdev, work)  # |a| / (2 |v|)
    bend_heading = _uniform(0, 2 * math.pi, shape, generator, gdev, work)
    extent = _uniform(smallest, largest, shape, generator, gdev, work)
    velocity = torch.stack([torch.cos(heading), torch.sin(heading)], dim=-1)
    acceleration = 2 * bend[..., None] * torch.stack([torch.cos(bend_heading), torch.sin(bend_heading)], dim=-1)
    start, end = -velocity / 2 + acceleration / 4, velocity / 2 + acceleration / 4
    scale = extent / torch.maximum(start.norm(dim=-1), end.norm(dim=-1))
    return velocity * scale[..., None], acceleration * scale[..., None]


def synthesize_layered_blur(
    background: torch.Tensor,
    *,
    generator: torch.Generator | int,
    kernels: torch.Tensor | Sequence[torch.Tensor] | str | Path | Sequence[str | Path],
    object_source: torch.Tensor | None = None,
    num_objects: int | tuple[int, int] = (1, 2),
    object_size: tuple[float, float] = (0.1, 0.3),
    kernel_scale: tuple[float, float] = (1.0, 2.5),
    mask_threshold: float = 0.01,
    gamma: float | tuple[float, float] = 2.2,
    quantize: bool = True,
) -> dict[str, torch.Tensor]:
    """Local blur by a second, independent generator: objects blurred by PSFs over a sharp background.

    Each object ``j`` (a blob of :func:`synthesize_local_blur`'s shapes, textured from ``object_source``)
    moves along the path of a kernel drawn from ``kernels`` (e.g. measured camera-shake PSFs, enlarged by
    a factor ``U(kernel_scale)``), and is composited back to front in linear light by the layered model
    ``blur = k_j * (alpha_j F_j) + (1 - k_j * alpha_j) blur`` (exact for a translating object in front of
    what it covers). The sharp frame is the objects at the kernels' centre of mass. This is what the
    project's cross-generator validation uses for local blur: the motion model (no quadratic
    trajectories, no sub-frame rendering) and the motion paths differ from the training generator's.

    Returns:
        ``{"sharp", "blur": (B, C, H, W), "mask": (B, 1, H, W)}`` (no displacements: a PSF path has no
        mid-exposure instant).

    >>> k = linear_kernels(torch.tensor([9.0]), torch.tensor([0.0]))
    >>> out = synthesize_layered_blur(torch.rand(2, 3, 32, 32), generator=0, kernels=k, num_objects=1)
    >>> sorted(out), bool(out["mask"].any())
    (['blur', 'mask', 'sharp'], True)
    """
    _check_batch(background, "background")
    generator = as_generator(generator)
    batch = background.shape[0]
    device, dtype = background.device, background.dtype
    work = _work_dtype(dtype)
    object_source = background.roll(1, dims=0) if object_source is None else object_source
    fewest, most = (num_objects, num_objects) if isinstance(num_objects, int) else tuple(int(n) for n in num_objects)
    if not 1 <= fewest <= most:
        raise ValueError(f"num_objects must be N or (low, high) with 1 <= low <= high, got {num_objects!r}")
    bank = list(_kernel_bank(_read_kernel_files(kernels), None))
    low_scale, high_scale = _range(kernel_scale, "kernel_scale")
    count = torch.randint(fewest, most + 1, (batch,), generator=generator, device=generator.device).to(device)
    camera = _camera_options(batch, generator, gamma, 0.0, 1.0, None, 0.0, device)
    linear_background = _linearise(background, camera)
    colors, alphas = _blob_layers(_linearise(object_source, camera), most, object_size, generator, work)
    alphas = alphas.to(dtype) * (torch.arange(most, device=device) < count[:, None]).to(dtype)[..., None, None, None]
    colors = colors.to(dtype)
    choice = torch.randint(len(bank), (batch, most), generator=generator, device=generator.device).tolist()
    scale = _uniform(low_scale, high_scale, (batch, most), generator, generator.device, torch.float64).tolist()
    sharp, blur = linear_background.clone(), linear_background.clone()
    coverage = torch.zeros_like(alphas[:, 0])
    for layer in range(most):
        kernels_here = []
        for image in range(batch):
            kernel = bank[choice[image][layer]]
            side = 2 * round(kernel.shape[-1] * scale[image][layer] / 2) + 1
            if side != kernel.shape[-1]:
                kernel = F.interpolate(kernel[None, None], size=(side, side), mode="bilinear", align_corners=True)[0, 0]
            kernels_here.append(center_kernel((kernel.clamp_min(0) / kernel.clamp_min(0).sum()).to(torch.float64)))
        canvas = max(k.shape[-1] for k in kernels_here)
        stacked = torch.stack([center_kernel(k, canvas) for k in kernels_here])[:, None].to(device=device, dtype=dtype)
        alpha, color = alphas[:, layer], colors[:, layer]
        smeared_alpha = blur_with_kernels(alpha, stacked, border="zero")
        smeared = blur_with_kernels(alpha * color, stacked, border="zero")
        blur = smeared + (1 - smeared_alpha) * blur
        sharp = alpha * color + (1 - alpha) * sharp
        coverage = torch.maximum(coverage, torch.maximum(smeared_alpha, alpha))
    sharp, blur = from_linear(sharp, camera["gamma"]), from_linear(blur, camera["gamma"])
    visible = (blur - sharp).abs().amax(dim=1, keepdim=True) > 0.5 / 255
    mask = ((coverage > mask_threshold) | visible).to(dtype)
    if quantize:
        sharp, blur = quantize_8bit(sharp), quantize_8bit(blur)
    return {"sharp": sharp, "blur": blur, "mask": mask}
