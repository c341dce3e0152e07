"""Pixel-adaptive sampling (SAPHNet with adaptive sampling, TPAMI, Sec. 3.1, Eq. 1-7).

The pieces, in the order a stage uses them:

1. :class:`PolicyHead`: a few convs on the previous stage's output give per-pixel logits z; the
   probability map of Eq. 4 is ``P = sigmoid(z)``, the probability that a pixel is hard to restore.
2. Selection of K pixels from P: :func:`select_top_k` at inference; for training
   :func:`sample_exact_k` (K distinct pixels, Plackett-Luce with weights P, the default scheme) or
   :func:`sample_bernoulli` (every pixel independently with probability P, a variable count), each with
   the log-probability of what it drew (:func:`plackett_luce_log_prob`, :func:`bernoulli_log_prob`).
3. :func:`pixel_index_to_coords`: the sampling tensor G of Eq. 1-2, (B, K, 2) normalised coordinates.
4. The sampling operator ``S(X, G)`` (Eq. 1-2), :func:`sample_at_coords`: bilinear reads of the
   feature map at the K coordinates, (B, C, K).
5. Its inverse (Eq. 3), :func:`scatter_to_grid`: bilinear splatting of the K refined values back onto
   a grid, normalised by the splatted weight (collisions average), plus the coverage (the splatted
   weight, at most 1); :func:`skip_merge` / :class:`SkipMerge` then fill the uncovered pixels from the
   encoder skip features and merge with a conv.
6. REINFORCE (Eq. 5-7): :func:`sampling_reward`, a baseline (self-critical: the reward of the top-K
   pass; or :func:`leave_one_out_baseline`) and :func:`policy_gradient_loss`.

Coordinates (as :func:`torch.nn.functional.grid_sample` with ``align_corners=False``): the last
dimension is **(x, y)**, x rightwards, y downwards, normalised so that -1 and 1 are the outer edges of
the image and pixel ``(i, j)`` (column i, row j) of a W x H map has its centre at
``((2 i + 1) / W - 1, (2 j + 1) / H - 1)``. The same G therefore addresses the same image location in
feature maps of any resolution (a pixel chosen at full resolution reads, bilinearly, the matching
point of a half-resolution map). Values outside the image read zero (corner by corner, as the
project's deformable conv) and are dropped by the splat.

Pixel indices are per image: ``pixel_index[b, k] = y * W + x`` in ``[0, H * W)`` (B, K) int64 -- not
the global ``b * H * W + ...`` indices of :func:`adeblur.ops.mask_to_pixel_index`.

Cost: gathering and splatting K points touch 4 corners each, O(B * K * C) time and memory (plus the
(B, C, H, W) output of the splat); nothing of size H*W x K is formed. Those reads and writes are
invisible to the aten-level MAC counter; a module using them reports :func:`sample_at_coords_macs` and
:func:`scatter_to_grid_macs` through ``macs_of_last_call`` (see :mod:`adeblur.engine.profile`).

Choices (see docs/ops.md, "Pixel-adaptive sampling ops"): snapping of coordinates within
``DEFAULT_SNAP`` pixels of a pixel centre (exact round trips), weights of the exactly-K scheme, the
accuracy term and the constants of the reward.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.ops.deform_conv import gather_pixels

__all__ = [
    "DEFAULT_OVERFLOW_PENALTY",
    "DEFAULT_SNAP",
    "PolicyHead",
    "SkipMerge",
    "bernoulli_log_prob",
    "coords_to_pixel_index",
    "grid_coords",
    "leave_one_out_baseline",
    "pixel_index_to_coords",
    "pixel_index_to_mask",
    "plackett_luce_log_prob",
    "policy_gradient_loss",
    "sample_at_coords",
    "sample_at_coords_macs",
    "sample_bernoulli",
    "sample_exact_k",
    "sampling_reward",
    "scatter_to_grid",
    "scatter_to_grid_macs",
    "select_top_k",
    "skip_merge",
]

DEFAULT_SNAP = 1e-3
"""Pixels: a sampling position this close to a pixel centre is moved onto it (see :func:`sample_at_coords`)."""

DEFAULT_OVERFLOW_PENALTY = 0.01
"""The penalty of Eq. 5 (reward units: mean absolute error of [0, 1] images) when more than K pixels are chosen."""

_DISTANCES = ("l1", "l2")


# --------------------------------------------------------------------------------------------------
# Coordinates


def _size_pair(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"size must be (H, W) with positive ints, got {tuple(size)!r}")
    return int(size[0]), int(size[1])


def pixel_index_to_coords(pixel_index: Tensor, size: Sequence[int], *, dtype: torch.dtype | None = None) -> Tensor:
    """The sampling tensor G of Eq. 1-2: normalised (x, y) centres of the given pixels.

    Args:
        pixel_index: (B, K) int64 per-image indices ``y * W + x``.
        size: (H, W) of the map the indices refer to.
        dtype: floating dtype of the result (default: the default dtype).

    Returns:
        (B, K, 2) coordinates ``((2 x + 1) / W - 1, (2 y + 1) / H - 1)`` (``align_corners=False``).

    >>> pixel_index_to_coords(torch.tensor([[0, 5]]), (2, 4))  # pixels (x=0, y=0) and (x=1, y=1)
    tensor([[[-0.7500, -0.5000],
             [-0.2500,  0.5000]]])
    """
    height, width = _size_pair(size)
    if pixel_index.dim() != 2 or pixel_index.dtype != torch.int64:
        raise ValueError(f"pixel_index must be (B, K) int64, got {tuple(pixel_index.shape)} {pixel_index.dtype}")
    dtype = dtype or torch.get_default_dtype()
    x = (pixel_index % width).to(dtype)
    y = torch.div(pixel_index, width, rounding_mode="floor").to(dtype)
    return torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)


def grid_coords(
    height: int,
    width: int,
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """G of a uniform ``height`` x ``width`` grid (raster order): the paper's uniform sampling.

    Sampling a larger map at these coordinates is bilinear resizing with ``align_corners=False``
    (``F.interpolate(x, (height, width), mode="bilinear")``; an average of 2 x 2 pixels when halving).

    Returns:
        (batch_size, height * width, 2).

    >>> grid_coords(1, 2)
    tensor([[[-0.5000,  0.0000],
             [ 0.5000,  0.0000]]])
    """
    _size_pair((height, width))
    index = torch.arange(height * width, device=device).expand(batch_size, -1)
    return pixel_index_to_coords(index, (height, width), dtype=dtype)


def coords_to_pixel_index(coords: Tensor, size: Sequence[int]) -> Tensor:
    """Per-image index ``y * W + x`` of the pixel nearest to each coordinate (clamped into the image).

    Args:
        coords: (B, K, 2) normalised (x, y).
        size: (H, W).

    Returns:
        (B, K) int64.

    >>> coords_to_pixel_index(torch.tensor([[[-0.25, 0.5], [2.0, -2.0]]]), (2, 4))
    tensor([[5, 3]])
    """
    height, width = _size_pair(size)
    _check_coords(coords)
    x = ((coords[..., 0] + 1) * width - 1) / 2
    y = ((coords[..., 1] + 1) * height - 1) / 2
    x = x.round().clamp(0, width - 1).long()
    y = y.round().clamp(0, height - 1).long()
    return y * width + x


def pixel_index_to_mask(pixel_index: Tensor, size: Sequence[int]) -> Tensor:
    """(B, 1, H, W) float mask, 1 at the given pixels (e.g. to show the sampled pixels).

    >>> pixel_index_to_mask(torch.tensor([[0, 5]]), (2, 3))
    tensor([[[[1., 0., 0.],
              [0., 0., 1.]]]])
    """
    height, width = _size_pair(size)
    if pixel_index.dim() != 2:
        raise ValueError(f"pixel_index must be (B, K), got shape {tuple(pixel_index.shape)}")
    mask = torch.zeros(pixel_index.shape[0], height * width, device=pixel_index.device)
    mask.scatter_(1, pixel_index, 1.0)
    return mask.view(-1, 1, height, width)


def _check_coords(coords: Tensor) -> None:
    if coords.dim() != 3 or coords.shape[2] != 2:
        raise ValueError(f"coords must be (B, K, 2) normalised (x, y), got shape {tuple(coords.shape)}")
    if not coords.is_floating_point():
        raise TypeError(f"coords must be floating point, got {coords.dtype}")


def _snapped_pixels(coords: Tensor, size: int, snap: float) -> Tensor:
    """Normalised coordinates -> pixel units (centre of pixel i at i); within ``snap`` of a centre: on it.

    The snapped value is exactly the integer, with the gradient of the unsnapped one (straight through).
    """
    pixels = ((coords + 1) * size - 1) / 2
    if snap <= 0:
        return pixels
    nearest = pixels.detach().round()
    on_centre = (pixels.detach() - nearest).abs() <= snap
    return torch.where(on_centre, nearest + (pixels - pixels.detach()), pixels)


def _bilinear_corners(coords: Tensor, height: int, width: int, snap: float) -> tuple[Tensor, Tensor]:
    """Per-image flat indices (B, K, 4) of the 4 bilinear corners and their weights (B, K, 4).

    Corners outside the image point at a valid pixel (clamped) and have weight 0.
    """
    x = _snapped_pixels(coords[..., 0], width, snap)
    y = _snapped_pixels(coords[..., 1], height, snap)
    x0, y0 = x.detach().floor(), y.detach().floor()
    fx, fy = x - x0, y - y0
    x0 = x0.clamp(-2, width).long()
    y0 = y0.clamp(-2, height).long()
    indices, weights = [], []
    for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            indices.append(yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1))
            weights.append(wy * wx * inside)
    return torch.stack(indices, -1), torch.stack(weights, -1)


# --------------------------------------------------------------------------------------------------
# The sampling operator and its inverse (Eq. 1-3)


def sample_at_coords(features: Tensor, coords: Tensor, *, snap: float = DEFAULT_SNAP) -> Tensor:
    """The sampling operator ``S(X, G)`` of Eq. 1-2: bilinear reads of ``features`` at K points each.

    Same values as ``F.grid_sample(features, coords[:, None], align_corners=False)`` (zero padding),
    except that a position within ``snap`` pixels of a pixel centre reads exactly that pixel (its
    gradient w.r.t. the coordinates is then the one-sided difference towards the next pixel right /
    below, as grid_sample's at a centre). Coordinates built by :func:`pixel_index_to_coords` carry
    float rounding of up to ~1e-7 * size pixels; the snap makes them read (and :func:`scatter_to_grid`
    write) their pixel exactly. ``snap=0`` turns it off. Differentiable w.r.t. both inputs.

    Args:
        features: (B, C, H, W), NCHW or channels_last.
        coords: (B, K, 2) normalised (x, y), see the module docstring.
        snap: tolerance in pixels of ``features``.

    Returns:
        (B, C, K): contiguous for NCHW ``features``; for channels_last ones a view of a (B, K, C)
        tensor (each pixel's channels together, read as whole rows).

    >>> features = torch.arange(8.0).view(1, 2, 2, 2)
    >>> coords = torch.tensor([[[-0.5, -0.5], [0.0, 0.0]]])  # pixel (0, 0), the centre of the image
    >>> sample_at_coords(features, coords)
    tensor([[[0.0000, 1.5000],
             [4.0000, 5.5000]]])
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    _check_coords(coords)
    batch, channels, height, width = features.shape
    if coords.shape[0] != batch:
        raise ValueError(f"coords batch {coords.shape[0]} != features batch {batch}")
    num_samples = coords.shape[1]
    index, weight = _bilinear_corners(coords, height, width, snap)
    weight = weight.to(features.dtype)
    if features.is_contiguous() or not features.is_contiguous(memory_format=torch.channels_last):
        # NCHW: read each channel plane (cache-friendly), (B, C, K, 4) corners
        corners = features.flatten(2).gather(2, index.view(batch, 1, -1).expand(batch, channels, -1))
        return (corners.view(batch, channels, num_samples, 4) * weight.unsqueeze(1)).sum(3)
    # channels_last: read whole pixel rows, (B, K, 4, C) corners
    flat = index + (torch.arange(batch, device=index.device) * (height * width)).view(batch, 1, 1)
    corners = gather_pixels(features, flat.reshape(-1)).view(batch, num_samples, 4, channels)
    return (corners * weight.unsqueeze(-1)).sum(2).permute(0, 2, 1)


def scatter_to_grid(
    values: Tensor, coords: Tensor, size: Sequence[int], *, snap: float = DEFAULT_SNAP
) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`sample_at_coords` (Eq. 3): K values put back onto an H x W grid.

    Each value is splatted bilinearly to the 4 pixels around its coordinate (the adjoint of the
    bilinear read) and every pixel is normalised by the weight it received::

        grid(q) = sum_k w_k(q) v_k / sum_k w_k(q),      coverage(q) = min(1, sum_k w_k(q))

    So a value read at a pixel centre goes back to exactly that pixel (an exact round trip, with
    the snapping of :func:`sample_at_coords`); collisions (several values landing on one pixel)
    average, weighted by their bilinear weights; pixels that receive nothing get 0 and coverage 0,
    to be filled by :func:`skip_merge`. Coverage is in [0, 1]: 1 where a sample sits on the pixel or
    samples' weights add up to at least 1, fractional at the rim of a sample between pixel centres.
    Differentiable w.r.t. values and coordinates.

    Args:
        values: (B, C, K), e.g. refined sampled features.
        coords: (B, K, 2) normalised (x, y), the coordinates they were sampled at.
        size: (H, W) of the output grid (any resolution: the coordinates are normalised).
        snap: tolerance in output pixels, as in :func:`sample_at_coords`.

    Returns:
        ``(grid, coverage)``: (B, C, H, W), (B, 1, H, W).

    >>> coords = torch.tensor([[[-0.5, -0.5], [-0.5, -0.5], [0.5, 0.5]]])  # two land on pixel (0, 0)
    >>> grid, coverage = scatter_to_grid(torch.tensor([[[1.0, 3.0, 7.0]]]), coords, (2, 2))
    >>> grid, coverage
    (tensor([[[[2., 0.],
              [0., 7.]]]]), tensor([[[[1., 0.],
              [0., 1.]]]]))
    """
    if values.dim() != 3:
        raise ValueError(f"values must be (B, C, K), got shape {tuple(values.shape)}")
    _check_coords(coords)
    height, width = _size_pair(size)
    batch, channels, num_samples = values.shape
    if coords.shape[:2] != (batch, num_samples):
        raise ValueError(f"coords must be (B, K, 2) = ({batch}, {num_samples}, 2), got {tuple(coords.shape)}")
    index, weight = _bilinear_corners(coords, height, width, snap)
    weight = weight.to(values.dtype)
    # per-channel planes: (B, C, H*W) += corner-weighted values, (B, 1, H*W) += corner weights
    target = index.view(batch, 1, 4 * num_samples)
    splat = (values.unsqueeze(3) * weight.unsqueeze(1)).reshape(batch, channels, 4 * num_samples)
    numerator = values.new_zeros(batch, channels, height * width).scatter_add(2, target.expand_as(splat), splat)
    total_weight = values.new_zeros(batch, 1, height * width).scatter_add(2, target, weight.view(target.shape))
    landed = total_weight > 0
    # double where: no 0/0 in the forward pass, no NaN gradient through the unused branch
    grid = torch.where(landed, numerator / torch.where(landed, total_weight, torch.ones_like(total_weight)), 0.0)
    return grid.view(batch, channels, height, width), total_weight.clamp(max=1).view(batch, 1, height, width)


def skip_merge(scattered: Tensor, coverage: Tensor, skip: Tensor) -> Tensor:
    """``coverage * scattered + (1 - coverage) * skip``: refined pixels where sampled, skip elsewhere.

    Args:
        scattered: (B, C, H, W) from :func:`scatter_to_grid`.
        coverage: (B, 1, H, W) in [0, 1] from :func:`scatter_to_grid`.
        skip: (B, C, H, W) encoder skip features at the grid's resolution.

    >>> skip_merge(torch.ones(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]), torch.zeros(1, 1, 1, 2))
    tensor([[[[1., 0.]]]])
    """
    if scattered.dim() != 4 or skip.shape != scattered.shape:
        raise ValueError(f"scattered {tuple(scattered.shape)} and skip {tuple(skip.shape)} must be equal (B, C, H, W)")
    if coverage.shape != (scattered.shape[0], 1, *scattered.shape[2:]):
        raise ValueError(
            f"coverage must be (B, 1, H, W) of scattered {tuple(scattered.shape)}, got {tuple(coverage.shape)}"
        )
    return torch.lerp(skip, scattered, coverage.to(scattered.dtype))


class SkipMerge(nn.Module):
    """:func:`skip_merge` then a ``kernel_size`` conv C -> C (Sec. 3.1: "pass through a convolutional layer").

    ``forward(scattered, coverage, skip) -> (B, C, H, W)``.

    >>> merge = SkipMerge(4)
    >>> scattered, coverage = scatter_to_grid(torch.rand(2, 4, 5), torch.rand(2, 5, 2) * 2 - 1, (6, 6))
    >>> merge(scattered, coverage, torch.rand(2, 4, 6, 6)).shape
    torch.Size([2, 4, 6, 6])
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, scattered: Tensor, coverage: Tensor, skip: Tensor) -> Tensor:
        return self.conv(skip_merge(scattered, coverage, skip))


def sample_at_coords_macs(channels: int, num_samples: int) -> int:
    """MACs of :func:`sample_at_coords`: 4 per read value (one per bilinear corner).

    ``num_samples`` counts all images of the batch (B * K).

    >>> sample_at_coords_macs(64, 1024)
    262144
    """
    return 4 * channels * num_samples


def scatter_to_grid_macs(channels: int, num_samples: int, num_grid_pixels: int) -> int:
    """MACs of :func:`scatter_to_grid`: 4 per splatted value (C channels and the weight), 1 per output value.

    ``num_samples`` and ``num_grid_pixels`` count all images of the batch (B * K, B * H * W).

    >>> scatter_to_grid_macs(64, 1024, 4096)
    528384
    """
    return 4 * (channels + 1) * num_samples + channels * num_grid_pixels


# --------------------------------------------------------------------------------------------------
# Policy head and pixel selection


class PolicyHead(nn.Module):
    """Eq. 4: per-pixel logits z of the probability ``P = sigmoid(z)`` that a pixel is hard to restore.

    ``num_layers`` convs (``kernel_size``, zero padding, stride 1) with ReLU between them:
    ``in_channels -> hidden_channels -> ... -> 1``. The last conv starts at zero, so the initial policy
    is P = 0.5 everywhere: :func:`sample_exact_k` then draws uniformly random K-subsets, and
    :func:`select_top_k`'s ties are broken arbitrarily (by ``torch.topk``).

    ``forward(x (B, in_channels, H, W)) -> logits (B, 1, H, W)``.

    >>> logits = PolicyHead(3)(torch.rand(2, 3, 8, 8))
    >>> logits.shape, bool((logits == 0).all())
    (torch.Size([2, 1, 8, 8]), True)
    """

    def __init__(self, in_channels: int, hidden_channels: int = 32, num_layers: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        widths = [in_channels] + [hidden_channels] * (num_layers - 1) + [1]
        layers: list[nn.Module] = []
        for index, (cin, cout) in enumerate(itertools.pairwise(widths)):
            if index:
                layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2))
        self.layers = nn.Sequential(*layers)
        last = self.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _flat_logits(logits: Tensor) -> Tensor:
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be (B, 1, H, W), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    return logits.flatten(1)


def _check_count(num_pixels: int, total: int) -> None:
    if isinstance(num_pixels, bool) or not isinstance(num_pixels, int) or not 1 <= num_pixels <= total:
        raise ValueError(f"num_pixels must be an int in [1, H * W = {total}], got {num_pixels!r}")


def _as_generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")


def _draw(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | int, kind: str) -> Tensor:
    """Uniform or Exp(1) draws (float64 for float64 ``like``, else float32) made on the generator's
    device, moved to ``like``'s device."""
    generator = _as_generator(generator)
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    draws = torch.empty(shape, device=generator.device, dtype=dtype)
    if kind == "uniform":
        draws.uniform_(generator=generator)
    else:
        draws.exponential_(generator=generator)
    return draws.to(like.device)


def select_top_k(logits: Tensor, num_pixels: int) -> Tensor:
    """The K pixels with the highest probability (inference, Sec. 3.1.1), highest first.

    Args:
        logits: (B, 1, H, W) policy logits (or probabilities: only the order matters).
        num_pixels: K, in [1, H * W].

    Returns:
        (B, K) int64 per-image indices ``y * W + x`` in decreasing order of the logits (ties:
        ``torch.topk``'s order). ``.sort(dim=1).values`` gives raster order.

    >>> select_top_k(torch.tensor([[[[0.1, 0.9], [0.5, 0.7]]]]), 2)
    tensor([[1, 3]])
    """
    flat = _flat_logits(logits)
    _check_count(num_pixels, flat.shape[1])
    return flat.topk(num_pixels, dim=1).indices


def plackett_luce_log_prob(logits: Tensor, pixel_index: Tensor) -> Tensor:
    """Log-probability of drawing ``pixel_index`` in this order, one at a time without replacement,
    each draw picking a remaining pixel with probability proportional to its ``P = sigmoid(logit)``.

    ``log p = sum_j [log P_(j) - log(sum of P over the pixels not drawn before j)]``, in the log
    domain (``logsigmoid``, ``logcumsumexp``): stable for any logits, O(H * W + K).

    Args:
        logits: (B, 1, H, W).
        pixel_index: (B, K) distinct per-image indices, in drawing order.

    Returns:
        (B,) differentiable w.r.t. ``logits``.

    >>> logits = torch.zeros(1, 1, 1, 4)  # P = 0.5 everywhere: 1/4 for the first, then 1/3
    >>> plackett_luce_log_prob(logits, torch.tensor([[2, 0]])).exp()
    tensor([0.0833])
    """
    log_weight = F.logsigmoid(_flat_logits(logits))
    batch, total = log_weight.shape
    if pixel_index.dim() != 2 or pixel_index.shape[0] != batch or pixel_index.shape[1] > total:
        raise ValueError(f"pixel_index must be (B={batch}, K <= {total}), got shape {tuple(pixel_index.shape)}")
    chosen = log_weight.gather(1, pixel_index)
    # mass still available at draw j = mass never drawn + mass of draws j, j+1, ..., K-1
    later_draws = chosen.flip(1).logcumsumexp(1).flip(1)
    if pixel_index.shape[1] < total:
        drawn = torch.zeros_like(log_weight, dtype=torch.bool).scatter_(1, pixel_index, True)
        never_drawn = log_weight.masked_fill(drawn, float("-inf")).logsumexp(1, keepdim=True)
        available = torch.logaddexp(never_drawn, later_draws)
    else:
        available = later_draws
    return (chosen - available).sum(1)


def sample_exact_k(logits: Tensor, num_pixels: int, *, generator: torch.Generator | int) -> tuple[Tensor, Tensor]:
    """Training selection: K distinct pixels drawn one by one with probability proportional to P.

    Sequential sampling without replacement (the Plackett-Luce model with weights ``P =
    sigmoid(logits)``), drawn in one go as an exponential race: the K smallest ``E_i / P_i``,
    ``E_i ~ Exp(1)`` (Gumbel-top-k on ``log P``). The most probable draw is :func:`select_top_k`'s.

    Args:
        logits: (B, 1, H, W) policy logits.
        num_pixels: K, in [1, H * W].
        generator: a ``torch.Generator`` (draws are made on its device) or an int seed (a CPU one);
            the same seed gives the same pixels.

    Returns:
        ``(pixel_index, log_prob)``: (B, K) int64 per-image indices in drawing order and (B,)
        :func:`plackett_luce_log_prob` of that ordered draw (differentiable w.r.t. ``logits``). The
        ordered draw is the action for REINFORCE; the reward ignores the order, so the estimator
        stays unbiased (the probability of the unordered set is a sum over K! orders).

    >>> index, log_prob = sample_exact_k(torch.zeros(2, 1, 4, 4), 3, generator=0)
    >>> index.shape, log_prob.shape, bool(torch.allclose(log_prob.exp(), torch.tensor(1 / (16 * 15 * 14))))
    (torch.Size([2, 3]), torch.Size([2]), True)
    """
    flat = _flat_logits(logits)
    _check_count(num_pixels, flat.shape[1])
    race = _draw(tuple(flat.shape), flat, generator, "exponential").log() - F.logsigmoid(flat.detach())
    pixel_index = race.topk(num_pixels, dim=1, largest=False).indices
    return pixel_index, plackett_luce_log_prob(logits, pixel_index)


def bernoulli_log_prob(logits: Tensor, selected: Tensor) -> Tensor:
    """``sum log P`` over the selected pixels plus ``sum log(1 - P)`` over the others, P = sigmoid(logits).

    Args:
        logits: (B, 1, H, W).
        selected: (B, 1, H, W) in {0, 1}.

    Returns:
        (B,) differentiable w.r.t. ``logits``.

    >>> bernoulli_log_prob(torch.zeros(1, 1, 1, 3), torch.tensor([[[[1.0, 0.0, 1.0]]]])).exp()
    tensor([0.1250])
    """
    flat = _flat_logits(logits)
    if selected.shape != logits.shape:
        raise ValueError(f"selected must be shaped like logits {tuple(logits.shape)}, got {tuple(selected.shape)}")
    chosen = selected.flatten(1).to(flat.dtype)
    return (chosen * F.logsigmoid(flat) + (1 - chosen) * F.logsigmoid(-flat)).sum(1)


def sample_bernoulli(logits: Tensor, *, generator: torch.Generator | int) -> tuple[Tensor, Tensor]:
    """Alternative training selection: every pixel independently with probability ``P = sigmoid(logits)``.

    The count varies (mean ``sum P``), hence the over-budget penalty of Eq. 5 (:func:`sampling_reward`);
    the most probable outcome is ``P > 0.5``, not the top K.

    Args:
        logits: (B, 1, H, W).
        generator: a ``torch.Generator`` (draws on its device) or an int seed (CPU).

    Returns:
        ``(selected, log_prob)``: (B, 1, H, W) float mask in {0, 1} (the pixel count is
        ``selected.sum((1, 2, 3))``; :func:`adeblur.ops.mask_to_pixel_index` lists them) and (B,)
        :func:`bernoulli_log_prob`.

    >>> selected, log_prob = sample_bernoulli(torch.tensor([[[[30.0, -30.0], [30.0, 30.0]]]]), generator=0)
    >>> selected.flatten().tolist(), bool(log_prob > -1e-6)
    ([1.0, 0.0, 1.0, 1.0], True)
    """
    flat = _flat_logits(logits)
    selected = (_draw(tuple(flat.shape), flat, generator, "uniform") < flat.detach().sigmoid()).to(logits.dtype)
    selected = selected.view_as(logits)
    return selected, bernoulli_log_prob(logits, selected)


# --------------------------------------------------------------------------------------------------
# REINFORCE (Eq. 5-7)


def sampling_reward(
    stage_outputs: Sequence[Tensor],
    target: Tensor,
    *,
    stage_weights: Sequence[float] | None = None,
    selected_count: Tensor | int | None = None,
    budget: int | None = None,
    overflow_penalty: float = DEFAULT_OVERFLOW_PENALTY,
    distance: str = "l1",
) -> Tensor:
    """Eq. 5, per image: ``R = sum_s w_s * accuracy_s - overflow_penalty * [count > budget]``.

    ``accuracy_s = -mean over (C, H, W) of |output_s - target|`` (``distance="l1"``) or of the squared
    difference (``"l2"``): the pixelwise accuracy of stage s's output; ``w_s`` default ``1 / S``. The
    penalty applies when ``selected_count`` pixels exceed the ``budget`` K (never with exactly-K
    sampling). The paper's constants are unreadable; see docs/ops.md for these.

    Args:
        stage_outputs: S tensors (B, C, H, W), the restored images of the stages the policy affects.
        target: (B, C, H, W) ground truth.
        stage_weights: S floats (default all ``1 / S``).
        selected_count: (B,) or int, pixels selected per image; with ``budget`` (both or neither).
        budget: K.
        overflow_penalty: the penalty, in the accuracy's units.
        distance: ``"l1"`` or ``"l2"``.

    Returns:
        (B,) detached rewards (a reward is not differentiated).

    >>> target = torch.zeros(2, 1, 2, 2)
    >>> outputs = [torch.full((2, 1, 2, 2), 0.25), torch.full((2, 1, 2, 2), 0.75)]
    >>> sampling_reward(outputs, target, selected_count=torch.tensor([4, 5]), budget=4)
    tensor([-0.5000, -0.5100])
    """
    if len(stage_outputs) == 0:
        raise ValueError("stage_outputs must hold at least one stage's output")
    if distance not in _DISTANCES:
        raise ValueError(f"distance must be one of {_DISTANCES}, got {distance!r}")
    if stage_weights is None:
        stage_weights = [1.0 / len(stage_outputs)] * len(stage_outputs)
    if len(stage_weights) != len(stage_outputs):
        raise ValueError(f"{len(stage_weights)} stage_weights for {len(stage_outputs)} stage_outputs")
    if (selected_count is None) != (budget is None):
        raise ValueError("selected_count and budget go together (both or neither)")
    if target.dim() != 4:
        raise ValueError(f"target must be (B, C, H, W), got shape {tuple(target.shape)}")
    target = target.detach()
    reward = target.new_zeros(target.shape[0])
    for output, weight in zip(stage_outputs, stage_weights):
        if output.shape != target.shape:
            raise ValueError(f"stage output {tuple(output.shape)} does not match target {tuple(target.shape)}")
        difference = output.detach() - target
        error = difference.abs() if distance == "l1" else difference.square()
        reward = reward - weight * error.flatten(1).mean(1)
    if budget is not None:
        count = torch.as_tensor(selected_count, device=reward.device)
        reward = reward - overflow_penalty * (count > budget).to(reward.dtype)
    return reward


def leave_one_out_baseline(reward: Tensor) -> Tensor:
    """Baseline for each sample: the mean reward of the other samples in the batch (unbiased).

    An alternative to the self-critical baseline (the reward of a second, top-K pass) that needs no
    extra pass but at least 2 samples per batch.

    >>> leave_one_out_baseline(torch.tensor([1.0, 2.0, 6.0]))
    tensor([4.0000, 3.5000, 1.5000])
    """
    if reward.dim() != 1 or reward.shape[0] < 2:
        raise ValueError(f"reward must be (B,) with B >= 2, got shape {tuple(reward.shape)}")
    return (reward.sum() - reward) / (reward.shape[0] - 1)


def policy_gradient_loss(log_prob: Tensor, reward: Tensor, baseline: Tensor | float) -> Tensor:
    """REINFORCE (Eq. 6-7) with a baseline: ``-mean_b[(reward_b - baseline_b) * log_prob_b]``.

    Its gradient is the single-sample estimate of ``-grad E[R]`` per image, averaged over the batch;
    the advantage ``reward - baseline`` is detached. Self-critical baseline: the
    :func:`sampling_reward` of the same images restored with :func:`select_top_k` (under
    ``torch.no_grad``).

    Args:
        log_prob: (B,) log-probability of the drawn selections (from :func:`sample_exact_k` or
            :func:`sample_bernoulli`).
        reward: (B,).
        baseline: (B,) or a float.

    Returns:
        scalar loss to minimise.

    >>> logits = torch.zeros(1, 1, 1, 2, requires_grad=True)
    >>> loss = policy_gradient_loss(bernoulli_log_prob(logits, torch.tensor([[[[1.0, 0.0]]]])),
    ...                             torch.tensor([1.0]), torch.tensor([0.5]))
    >>> loss.backward(); logits.grad  # the chosen pixel's logit is pushed up, the other's down
    tensor([[[[-0.2500,  0.2500]]]])
    """
    if log_prob.dim() != 1 or reward.shape != log_prob.shape:
        raise ValueError(
            f"log_prob and reward must both be (B,), got {tuple(log_prob.shape)} and {tuple(reward.shape)}"
        )
    advantage = (reward - baseline).detach()
    if advantage.shape != log_prob.shape:
        raise ValueError(f"baseline must be a float or (B,) = {tuple(log_prob.shape)}")
    return -(advantage.to(log_prob.dtype) * log_prob).mean()
