"""SAPHNet with pixel-adaptive sampling (Suin et al., TPAMI) and the same sampling in DMPHN (Table VI).

Top-down, as the paper's Fig. 2 (Sec. 3, 3.1, 3.2; choices and reasons in ``docs/saphnet-as.md``):

1. The 1-2-4 patch hierarchy of :class:`~adeblur.models.saphnet.SAPHNet`, run bottom-up, each level a
   *stage* whose restored image (the input plus the level's decoder output) is returned for ground-truth
   supervision. Stage 1 (the bottom, most-patch level) is SAPHNet's level unchanged: uniform.
2. Stages 2 and 3 (every level above the bottom) sample pixels. A :class:`PixelSampler` runs a
   :class:`~adeblur.ops.PolicyHead` on the previous stage's restored image (area-averaged to the
   *selection grid*) and picks pixels of that grid. The selection grid is the encoder's second-deepest
   scale (1/2 resolution by default, the "full-resolution tensor" the points are read from); the budget
   is the pixel count of the deepest, uniformly downsampled scale, ``K = budget * (H / s) * (W / s)``
   per image (s = 4 by default), laid out as a regular lattice in uniform mode.
3. The points are a set, features (B, C, K). Of the K points, a fixed regular sub-lattice (every
   ``anchor_stride``-th lattice row and column, K / 4 by default) is always taken: these *anchors* are
   the uniformly, strongly downsampled features of attention step 1 (descriptors, Eq. 10-12); the
   other K - K_anchor are chosen by the policy (top-K at inference, sampled in training). Uniform mode
   (``sampling="uniform"`` or ``policy="uniform"``) takes the whole lattice instead: same K.
4. A sampled stage: the encoder's finer scales run on the level's patches as in SAPHNet; the deepest
   scale's stride-2 conv is evaluated at the K points only (:class:`PointConv`, the 3x3 neighbourhood
   of each point on the 1/2-resolution map; on the uniform lattice it *is* the stride-2 conv); the
   content-aware resblocks (:class:`SetContentAwareBlock`) run on the set; the inverse puts the refined
   points back on the 1/2-resolution grid (Eq. 3, :func:`~adeblur.ops.scatter_to_grid`), the encoder's
   1/2-resolution features fill the other pixels and a conv merges (:class:`~adeblur.ops.SkipMerge`);
   SAPHNet's finer decoder scales finish. From the set onward the stage works on the whole image.
5. :class:`SetContentAwareModule` on the set: attention with step 1 on the anchors and step 2 on all K
   points, with Eq. 16's spatial and channel sigmoid masks (an
   :class:`~adeblur.ops.EfficientAttention` with 1x1 maps run on the (B, C, 1, K) set, the anchors as
   its ``valid`` region); the PDF (Eq. 18, :class:`SetPixelFilter`) with V and offsets from the sampled
   input, reading each point's 5x5 neighbourhood at its offsets from the 1/2-resolution encoder map;
   the fusion mask from the sampled input (Eq. 19). The resblock's two convs act per point (1x1): a set
   has no 3x3 neighbourhood of its own.
6. Cross-level attention / DMPHN's sum: the level below's features are read at each point's cell of
   the deepest grid; a sampled level passes up its :func:`coarse_view` (its points averaged per cell,
   the anchors' nearest value where no point fell).

:class:`DMPHNAS` applies steps 2-4 and 6 to DMPHN (its deepest-scale ResBlocks act per point).

Forward: ``model(image, *, return_aux=False, policy=None, generator=None)``. ``policy``: ``"top-k"``
(inference), ``"sample"`` (exactly-K Plackett-Luce draws, :func:`~adeblur.ops.sample_exact_k`, needs
``generator``) or ``"uniform"``; default: the model's ``policy`` attribute in training mode,
``"top-k"`` in eval mode (``"uniform"`` if the ``policy`` attribute is ``"uniform"``: the pre-training
phase, whose policy heads are untrained); ``sampling="uniform"`` models always sample uniformly. With ``return_aux``
the aux dict holds ``stage_outputs`` (one (B, 3, H, W) image per stage, bottom first), ``pixel_index``
(per sampled stage, (B, K) indices on the selection grid, anchors first), ``log_prob`` (per sampled
stage, (B,) log-probability of the policy's draw, differentiable w.r.t. the policy head; None for
uniform), ``policy_logits`` (per sampled stage, (B, 1, h, w) with anchors masked; None for uniform),
``count`` (K), ``num_anchors``, ``selection_size``, ``selection_scale`` and ``image_size``.
:meth:`SampledHierarchy.extra_maps` draws ``sampled_pixels_stage2``, ``sampled_pixels_stage3``
(and ``sampling_probability_stage*``) for ``adeblur deblur --save-maps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.models.dmphn import (
    DMPHNDecoder,
    DMPHNEncoder,
    check_levels,
    hierarchy_size_multiple,
    merge_patches,
    patch_grid,
    regrid,
    split_patches,
)
from adeblur.models.nafnet import check_image_batch, pad_to_multiple
from adeblur.models.saphnet import (
    DEFAULT_MAX_DISPLACEMENT,
    SAPHNetDecoder,
    SAPHNetEncoder,
)
from adeblur.ops import (
    AttentiveFusion,
    EfficientAttention,
    PolicyHead,
    SkipMerge,
    pixel_index_to_coords,
    pixel_index_to_mask,
    plackett_luce_log_prob,
    sample_at_coords,
    sample_at_coords_macs,
    sample_exact_k,
    scatter_to_grid,
    scatter_to_grid_macs,
    select_top_k,
    skip_merge,
)
from adeblur.ops.pixel_filter import check_filter_geometry

__all__ = [
    "DMPHNAS",
    "PixelSampler",
    "PixelSelection",
    "PointConv",
    "PointScatter",
    "SAPHNetAS",
    "SampledHierarchy",
    "SetContentAwareBlock",
    "SetContentAwareModule",
    "SetPixelFilter",
    "SetResBlock",
    "coarse_view",
    "sampling_lattice",
]

SAMPLING_MODES = ("adaptive", "uniform")
POLICIES = ("top-k", "sample", "uniform")
# Gathered neighbourhood values per chunk of points (and their bilinear corners): bounded memory at HD sizes.
_CHUNK_BYTES = 32 * 2**20


# --------------------------------------------------------------------------------------------------
# Which pixels: the lattice, the anchors, the policy


def sampling_lattice(
    selection_size: tuple[int, int],
    coarse_size: tuple[int, int],
    budget: float = 1.0,
    anchor_stride: int = 2,
    *,
    device: torch.device | str | None = None,
) -> tuple[Tensor, tuple[int, int]]:
    """The uniform lattice of K points on the selection grid, anchors first.

    ``rows = round(h * sqrt(budget))`` and ``cols = round(w * sqrt(budget))`` (clamped to [1, the
    selection grid's side]), K = rows * cols; lattice row i sits on selection row ``i * Hs // rows``
    (for budget 1 and a selection grid twice the coarse one: rows 0, 2, 4, ..., the centres of a
    stride-2 conv). Anchors: lattice rows and columns 0, a, 2a, ... (``anchor_stride`` a).

    Returns:
        ``(index, anchor_shape)``: (K,) int64 per-image indices ``y * Ws + x``, the anchors first
        (raster order), then the other lattice points (raster order); (rows, cols) of the anchors'
        regular layout (their count is the product).

    >>> sampling_lattice((4, 4), (2, 2))  # 2 x 2 lattice on a 4 x 4 grid, anchor stride 2: one anchor
    (tensor([ 0,  2,  8, 10]), (1, 1))
    """
    (sel_h, sel_w), (height, width) = selection_size, coarse_size
    if not budget > 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if anchor_stride < 1:
        raise ValueError(f"anchor_stride must be >= 1, got {anchor_stride}")
    scale = math.sqrt(budget)
    rows = min(sel_h, max(1, round(height * scale)))
    cols = min(sel_w, max(1, round(width * scale)))
    ys = torch.arange(rows, device=device) * sel_h // rows
    xs = torch.arange(cols, device=device) * sel_w // cols
    lattice = ys[:, None] * sel_w + xs[None, :]
    anchor = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    anchor[::anchor_stride, ::anchor_stride] = True
    anchor_shape = (-(-rows // anchor_stride), -(-cols // anchor_stride))
    return torch.cat((lattice[anchor], lattice[~anchor])), anchor_shape


@dataclass(frozen=True, eq=False)
class PixelSelection:
    """The K points a sampled stage processes.

    Attributes:
        pixel_index: (B, K) int64 per-image indices ``y * Ws + x`` on the selection grid, the
            ``num_anchors`` anchors first.
        num_anchors: anchors (attention step 1's uniform points).
        anchor_shape: (rows, cols) of the anchors' regular layout.
        selection_size: (Hs, Ws) of the selection grid.
        coarse_size: (h, w) of the deepest (uniform) grid, h = Hs / 2.
        log_prob: (B,) log-probability of the policy's draw (differentiable w.r.t. the policy head), or
            None (uniform sampling).
        logits: (B, 1, Hs, Ws) policy logits with the anchors masked, or None (uniform sampling).
    """

    pixel_index: Tensor
    num_anchors: int
    anchor_shape: tuple[int, int]
    selection_size: tuple[int, int]
    coarse_size: tuple[int, int]
    log_prob: Tensor | None = None
    logits: Tensor | None = None

    def coords(self, dtype: torch.dtype) -> Tensor:
        """(B, K, 2) normalised (x, y) centres of the points (G of Eq. 1-2)."""
        return pixel_index_to_coords(self.pixel_index, self.selection_size, dtype=dtype)

    def pixel_xy(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(B, K) column and row of every point on the selection grid."""
        width = self.selection_size[1]
        return (self.pixel_index % width).to(dtype), torch.div(self.pixel_index, width, rounding_mode="floor").to(dtype)

    def coarse_cells(self) -> Tensor:
        """(B, K) per-image index of the deepest-grid cell each point lies in."""
        sel_w, (height, width) = self.selection_size[1], self.coarse_size
        x, y = self.pixel_index % sel_w, torch.div(self.pixel_index, sel_w, rounding_mode="floor")
        scale_y, scale_x = self.selection_size[0] // height, sel_w // width
        return torch.div(y, scale_y, rounding_mode="floor") * width + torch.div(x, scale_x, rounding_mode="floor")

    def anchor_mask(self) -> Tensor:
        """(B, 1, 1, K) bool, True on the anchors: the ``valid`` region of the set attentions."""
        batch, count = self.pixel_index.shape
        mask = torch.zeros(batch, 1, 1, count, dtype=torch.bool, device=self.pixel_index.device)
        mask[..., : self.num_anchors] = True
        return mask


class PixelSampler(nn.Module):
    """Chooses a sampled stage's K points (Sec. 3.1.1) from the previous stage's restored image.

    Args:
        image_channels: channels of the previous stage's output (the policy head's input).
        selection_scale: r, the selection grid is the image area-averaged by r (the head runs there).
        budget: multiplier of the uniform budget K (Table V: more or fewer pixels).
        anchor_stride: the anchors are every ``anchor_stride``-th lattice row and column.
        hidden_channels, num_layers: of the :class:`~adeblur.ops.PolicyHead`.

    ``forward(previous_output (B, C, H, W), coarse_size, *, policy, generator=None)`` ->
    :class:`PixelSelection`. ``policy="uniform"``: the lattice (the head does not run);
    ``"top-k"``: anchors + the K - K_anchor most probable other pixels; ``"sample"``: anchors + an
    exactly-K Plackett-Luce draw (:func:`~adeblur.ops.sample_exact_k`) with ``generator``. The chosen
    pixels follow the anchors in raster order (``log_prob`` is that of the ranked choice or the draw). ``scores``
    (B, 1, H, W), optional: used in place of the head's logits (area-averaged to the selection grid),
    e.g. a ground-truth blur mask for an oracle study.

    >>> sampler = PixelSampler(3, selection_scale=2)
    >>> selection = sampler(torch.rand(1, 3, 16, 16), (4, 4), policy="top-k")
    >>> selection.pixel_index.shape, selection.num_anchors
    (torch.Size([1, 16]), 4)
    """

    def __init__(
        self,
        image_channels: int = 3,
        *,
        selection_scale: int = 2,
        budget: float = 1.0,
        anchor_stride: int = 2,
        hidden_channels: int = 32,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        if not budget > 0:
            raise ValueError(f"budget must be positive, got {budget}")
        if anchor_stride < 1:
            raise ValueError(f"anchor_stride must be >= 1, got {anchor_stride}")
        self.selection_scale, self.budget, self.anchor_stride = selection_scale, float(budget), anchor_stride
        self.head = PolicyHead(image_channels, hidden_channels, num_layers)

    def forward(
        self,
        previous_output: Tensor,
        coarse_size: tuple[int, int],
        *,
        policy: str,
        generator: torch.Generator | int | None = None,
        scores: Tensor | None = None,
    ) -> PixelSelection:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        batch = previous_output.shape[0]
        selection_size = (previous_output.shape[-2] // self.selection_scale, previous_output.shape[-1] // self.selection_scale)
        lattice, anchor_shape = sampling_lattice(
            selection_size, coarse_size, self.budget, self.anchor_stride, device=previous_output.device
        )
        count, num_anchors = lattice.shape[0], anchor_shape[0] * anchor_shape[1]
        geometry = {"num_anchors": num_anchors, "anchor_shape": anchor_shape, "selection_size": selection_size}
        if policy == "uniform":
            return PixelSelection(lattice.expand(batch, -1), coarse_size=coarse_size, **geometry)
        if scores is not None:  # given scores (an oracle study), not the policy's
            logits = F.avg_pool2d(scores, self.selection_scale) if self.selection_scale > 1 else scores.clone()
        else:
            shrunk = F.avg_pool2d(previous_output, self.selection_scale) if self.selection_scale > 1 else previous_output
            logits = self.head(shrunk)  # Eq. 4: P = sigmoid(logits)
        anchors = lattice[:num_anchors].expand(batch, -1)
        taken = torch.zeros(batch, selection_size[0] * selection_size[1], dtype=torch.bool, device=logits.device)
        taken.scatter_(1, anchors, True)  # the anchors are taken already: probability 0 for the policy
        logits = logits.masked_fill(taken.view_as(logits), torch.finfo(logits.dtype).min)
        chosen_count = count - num_anchors
        if chosen_count == 0:
            return PixelSelection(anchors, coarse_size=coarse_size, log_prob=logits.new_zeros(batch), logits=logits, **geometry)
        if policy == "top-k":
            chosen = select_top_k(logits, chosen_count)
            log_prob = plackett_luce_log_prob(logits, chosen)
        else:
            if generator is None:
                raise ValueError('policy "sample" needs a generator (a torch.Generator or an int seed)')
            chosen, log_prob = sample_exact_k(logits, chosen_count, generator=generator)
        # The points form a set: raster order reads the neighbourhoods and cells of nearby points together
        # (the whole saphnet-as forward ran 1.35x slower on CPU in the ranking's scattered order, see
        # docs/saphnet-as.md "Inference time at equal K"); log_prob keeps the order of the draw.
        chosen = chosen.sort(1).values
        return PixelSelection(
            torch.cat((anchors, chosen), 1), coarse_size=coarse_size, log_prob=log_prob, logits=logits, **geometry
        )


# --------------------------------------------------------------------------------------------------
# Ops on the set of points


def _neighbourhood_conv(
    fine: Tensor,
    selection: PixelSelection,
    weight: Tensor,
    bias: Tensor | None,
    *,
    offsets: Tensor | None = None,
    modulation: Tensor | None = None,
) -> Tensor:
    """A k x k conv of ``fine`` (B, Cin, Hs, Ws) evaluated at the selection's points only: (B, Cout, K).

    Tap (i, j) of point p reads ``fine`` bilinearly at ``p + (i - k//2, j - k//2) + offset`` (zero
    outside), times ``modulation``; ``offsets`` (B, 2 * k*k, K) in (dy, dx) per tap (deform_conv2d's
    layout), ``modulation`` (B, k*k, K). Memory O(chunk * Cin * k*k): never a dense im2col.
    """
    out_channels, in_channels, size, _ = weight.shape
    taps, half = size * size, size // 2
    batch, count = selection.pixel_index.shape
    sel_h, sel_w = selection.selection_size
    x, y = selection.pixel_xy(fine.dtype)
    steps = torch.arange(-half, half + 1, device=fine.device, dtype=fine.dtype)
    tap_y, tap_x = steps.repeat_interleave(size), steps.repeat(size)  # raster order of the taps
    matrix = weight.to(fine.dtype).reshape(out_channels, in_channels, taps)
    chunk = max(1, _CHUNK_BYTES // max(1, 6 * batch * in_channels * taps * fine.element_size()))
    pieces = []
    for start in range(0, count, chunk):
        part = slice(start, min(count, start + chunk))
        ys = y[:, part, None] + tap_y  # (B, k', taps), selection-grid pixels
        xs = x[:, part, None] + tap_x
        if offsets is not None:
            pairs = offsets[:, :, part].reshape(batch, taps, 2, -1)
            ys = ys + pairs[:, :, 0].transpose(1, 2)
            xs = xs + pairs[:, :, 1].transpose(1, 2)
        coords = torch.stack(((2 * xs + 1) / sel_w - 1, (2 * ys + 1) / sel_h - 1), -1).view(batch, -1, 2)
        values = sample_at_coords(fine, coords).view(batch, in_channels, -1, taps)  # (B, Cin, k', taps)
        if modulation is not None:
            values = values * modulation[:, :, part].transpose(1, 2).unsqueeze(1)
        pieces.append(torch.einsum("bcpt,oct->bop", values, matrix))
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, 2)
    return out if bias is None else out + bias.to(out.dtype).view(1, -1, 1)


def _neighbourhood_conv_macs(in_channels: int, out_channels: int, taps: int, num_points: int) -> int:
    """4 MACs per bilinearly read value (:func:`~adeblur.ops.sample_at_coords_macs`) plus the conv."""
    return sample_at_coords_macs(in_channels, num_points * taps) + num_points * taps * in_channels * out_channels


class PointConv(nn.Module):
    """The deepest scale's stride-2 3x3 conv, evaluated only at the chosen points of the finer map.

    Weight and bias as ``nn.Conv2d(in_channels, out_channels, 3)``; point p's output is the conv
    centred on p. On the uniform lattice (points at rows and columns 0, 2, 4, ...) it equals
    ``nn.Conv2d(..., stride=2, padding=1)``. Sets ``macs_of_last_call``.

    ``forward(fine (B, Cin, Hs, Ws), selection) -> (B, Cout, K)``.

    >>> conv = PointConv(4, 8)
    >>> fine = torch.rand(1, 4, 8, 8)
    >>> selection = PixelSampler(4)(torch.rand(1, 4, 16, 16), (4, 4), policy="uniform")
    >>> strided = F.conv2d(fine, conv.weight, conv.bias, stride=2, padding=1)  # (1, 8, 4, 4)
    >>> order = selection.pixel_index[0].argsort()  # anchors first: back to raster order
    >>> torch.allclose(conv(fine, selection)[..., order].view(1, 8, 4, 4), strided, atol=1e-5)
    True
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        template = nn.Conv2d(in_channels, out_channels, kernel_size)  # nn.Conv2d's initialisation
        self.weight, self.bias = template.weight, template.bias
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size

    def forward(self, fine: Tensor, selection: PixelSelection) -> Tensor:
        points = selection.pixel_index.numel()
        taps = self.kernel_size * self.kernel_size
        self.macs_of_last_call = _neighbourhood_conv_macs(self.in_channels, self.out_channels, taps, points)
        return _neighbourhood_conv(fine, selection, self.weight, self.bias)


class SetPixelFilter(nn.Module):
    """The PDF at the sampled points (Eq. 17-18): V and offsets from the sampled input, taps read from
    the finer map.

    ``y_p = sum_k V_{p,k} W[k] fine[p + p_k + Delta_{p,k}]``: the meta-layer (a 1x1 conv on the set,
    zero-initialised: V = 1, offsets 0 at the start) gives ``V = 2 sigmoid(.)`` in (0, 2) and offsets
    ``max_displacement * tanh(.)`` in selection-grid pixels, per coordinate (as
    :class:`~adeblur.ops.PixelDependentFilter`); W is a ``kernel_size`` conv weight
    (channels, fine_channels, k, k). Sets ``macs_of_last_call``.

    ``forward(x (B, channels, K), fine (B, fine_channels, Hs, Ws), selection) -> (B, channels, K)``.

    >>> pdf = SetPixelFilter(8, 4)
    >>> selection = PixelSampler(3)(torch.rand(1, 3, 16, 16), (4, 4), policy="uniform")
    >>> pdf(torch.rand(1, 8, 16), torch.rand(1, 4, 8, 8), selection).shape
    torch.Size([1, 8, 16])
    """

    def __init__(
        self, channels: int, fine_channels: int, kernel_size: int = 5, *, max_displacement: float = DEFAULT_MAX_DISPLACEMENT
    ) -> None:
        super().__init__()
        check_filter_geometry(kernel_size, max_displacement)
        self.channels, self.fine_channels, self.kernel_size = channels, fine_channels, kernel_size
        self.max_displacement = float(max_displacement)
        template = nn.Conv2d(fine_channels, channels, kernel_size)
        self.weight, self.bias = template.weight, template.bias
        self.meta = nn.Conv1d(channels, 3 * kernel_size * kernel_size, 1)  # V and (dy, dx) per tap
        nn.init.zeros_(self.meta.weight)
        nn.init.zeros_(self.meta.bias)

    def forward(self, x: Tensor, fine: Tensor, selection: PixelSelection) -> Tensor:
        taps = self.kernel_size * self.kernel_size
        points = selection.pixel_index.numel()
        self.macs_of_last_call = points * 3 * taps * self.channels + points * taps * self.fine_channels + (
            _neighbourhood_conv_macs(self.fine_channels, self.channels, taps, points)
        )  # meta-layer, modulation, bilinear reads and the conv
        raw = self.meta(x)
        modulation = 2 * torch.sigmoid(raw[:, :taps])
        offsets = self.max_displacement * torch.tanh(raw[:, taps:])
        return _neighbourhood_conv(fine, selection, self.weight, self.bias, offsets=offsets, modulation=modulation)


class PointScatter(nn.Module):
    """The inverse (Eq. 3): values at the points put back on the selection grid, with the coverage.

    :func:`~adeblur.ops.scatter_to_grid` at the points' pixel centres: exactly their pixels, coverage
    1 there and 0 elsewhere. Sets ``macs_of_last_call``.

    ``forward(values (B, C, K), selection) -> (grid (B, C, Hs, Ws), coverage (B, 1, Hs, Ws))``.
    """

    def forward(self, values: Tensor, selection: PixelSelection) -> tuple[Tensor, Tensor]:
        batch, channels, count = values.shape
        sel_h, sel_w = selection.selection_size
        self.macs_of_last_call = scatter_to_grid_macs(channels, batch * count, batch * sel_h * sel_w)
        return scatter_to_grid(values, selection.coords(values.dtype), selection.selection_size)


def coarse_view(values: Tensor, selection: PixelSelection) -> Tensor:
    """A dense (B, C, h, w) map of the deepest grid from the set: each cell the mean of the points in
    it, the nearest anchor's value in cells without a point (the anchors are a regular lattice).

    On the uniform lattice with budget 1 every cell holds exactly one point: the set laid out as a map.

    >>> selection = PixelSampler(3)(torch.rand(1, 3, 8, 8), (2, 2), policy="uniform")
    >>> values = torch.arange(4.0).view(1, 1, 4)  # anchor first, then the lattice in raster order
    >>> coarse_view(values, selection)
    tensor([[[[0., 1.],
              [2., 3.]]]])
    """
    batch, channels, _ = values.shape
    height, width = selection.coarse_size
    cells = selection.coarse_cells()
    grid, coverage = scatter_to_grid(values, pixel_index_to_coords(cells, (height, width), dtype=values.dtype), (height, width))
    anchors = values[:, :, : selection.num_anchors].reshape(batch, channels, *selection.anchor_shape)
    fallback = F.interpolate(anchors, size=(height, width), mode="nearest")
    return skip_merge(grid, coverage, fallback)


class _CoarseView(nn.Module):
    """:func:`coarse_view` as a module, reporting its splat through ``macs_of_last_call``."""

    def forward(self, values: Tensor, selection: PixelSelection) -> Tensor:
        batch, channels, count = values.shape
        height, width = selection.coarse_size
        self.macs_of_last_call = scatter_to_grid_macs(channels, batch * count, batch * height * width)
        return coarse_view(values, selection)


def _read_cells(dense: Tensor, selection: PixelSelection) -> Tensor:
    """(B, C, h, w) deepest-grid map -> (B, C, K): the value of each point's cell."""
    cells = selection.coarse_cells()
    return dense.flatten(2).gather(2, cells.unsqueeze(1).expand(-1, dense.shape[1], -1))


def _as_map(values: Tensor) -> Tensor:
    """(B, C, K) -> (B, C, 1, K): the set as a one-row map for the 1x1 attention convs."""
    return values.unsqueeze(2)


# --------------------------------------------------------------------------------------------------
# Blocks on the set


def _set_attention(channels: int, clusters: int, gate_input: str) -> EfficientAttention:
    """Efficient attention whose convs are all 1x1, so that it runs on a (B, C, 1, K) set."""
    return EfficientAttention(channels, clusters, gate_input=gate_input, gate_kernel_size=1, map_kernel_size=1)


class SetContentAwareModule(nn.Module):
    """The content-aware module on a sampled set (Sec. 3.2 with sampling, Eq. 9-20).

    Global branch: self-attention (plus, with ``cross_attention``, attention to ``source`` with maps
    from x), step 1 (cluster maps, descriptors, the pooled channel mask) on the anchors, step 2 (the
    per-point weights over the clusters) on every point, with the spatial mask M1 and channel mask M2
    of Eq. 16. Local branch: :class:`SetPixelFilter`. Fusion (Eq. 19-20): ``M = sigmoid(f(x))`` from
    the sampled input, f a 1x1 conv.

    ``forward(x (B, C, K), fine, selection, source=None) -> (B, C, K)``.

    >>> module = SetContentAwareModule(8, 4, clusters=2)
    >>> selection = PixelSampler(3)(torch.rand(1, 3, 16, 16), (4, 4), policy="uniform")
    >>> module(torch.rand(1, 8, 16), torch.rand(1, 4, 8, 8), selection).shape
    torch.Size([1, 8, 16])
    """

    def __init__(
        self,
        channels: int,
        fine_channels: int,
        *,
        clusters: int = 16,
        cross_attention: bool = False,
        max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
        gate_input: str = "pooled",
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.self_attention = _set_attention(channels, clusters, gate_input)
        self.cross_attention = _set_attention(channels, clusters, gate_input) if cross_attention else None
        self.filter = SetPixelFilter(channels, fine_channels, kernel_size, max_displacement=max_displacement)
        self.fusion = AttentiveFusion(channels, kernel_size=1)

    def forward(self, x: Tensor, fine: Tensor, selection: PixelSelection, source: Tensor | None = None) -> Tensor:
        if self.cross_attention is not None and source is None:
            raise ValueError("this module has cross-attention: pass the attended features as source")
        anchors = selection.anchor_mask()
        x_map = _as_map(x)
        attended = self.self_attention(x_map, valid=anchors)
        if self.cross_attention is not None:
            attended = attended + self.cross_attention(x_map, _as_map(source), valid=anchors)
        filtered = _as_map(self.filter(x, fine, selection))
        return self.fusion(x_map, attended, filtered).squeeze(2)


class SetContentAwareBlock(nn.Module):
    """SAPHNet's resblock on the set: ``x + conv(module(relu(conv(x))))`` with per-point (1x1) convs.

    Keyword arguments go to :class:`SetContentAwareModule`.
    """

    def __init__(self, channels: int, fine_channels: int, **module_options: Any) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 1)
        self.module = SetContentAwareModule(channels, fine_channels, **module_options)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor, fine: Tensor, selection: PixelSelection, source: Tensor | None = None) -> Tensor:
        return x + self.conv2(self.module(torch.relu(self.conv1(x)), fine, selection, source))


class SetResBlock(nn.Module):
    """DMPHN's resblock on the set: ``x + conv(relu(conv(x)))`` with per-point (1x1) convs.

    >>> SetResBlock(4)(torch.rand(2, 4, 7)).shape
    torch.Size([2, 4, 7])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.ReLU(), nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


# --------------------------------------------------------------------------------------------------
# Sampled levels


class _SampledSAPHNetLevel(nn.Module):
    """One sampled SAPHNet stage: finer encoder scales on patches, the deepest scale on the set."""

    def __init__(
        self, widths: Sequence[int], blocks: Sequence[int], image_channels: int, *, cross_attention: bool,
        cross_level_attention: bool, module_options: dict[str, Any], set_options: dict[str, Any],
    ) -> None:  # fmt: skip
        super().__init__()
        channels, fine_channels, count = widths[-1], widths[-2], blocks[-1]
        self.cross_attention = cross_attention
        self.fine_encoder = SAPHNetEncoder(widths[:-1], blocks[:-1], image_channels, **module_options)
        self.lift = PointConv(fine_channels, channels)
        self.encoder_blocks = nn.ModuleList(
            SetContentAwareBlock(channels, fine_channels, **set_options) for _ in range(count)
        )
        self.cross_level = (
            _set_attention(channels, set_options["clusters"], set_options["gate_input"]) if cross_level_attention else None
        )
        self.decoder_blocks = nn.ModuleList(
            SetContentAwareBlock(channels, fine_channels, cross_attention=cross_attention, **set_options)
            for _ in range(count)
        )
        self.project = nn.Conv1d(channels, fine_channels, 1)  # the transposed conv's channel change, per point
        self.scatter = PointScatter()
        self.merge = SkipMerge(fine_channels)
        self.fine_decoder = SAPHNetDecoder(
            widths[:-1], blocks[:-1], image_channels, cross_attention=cross_attention, **module_options
        )
        self.view = _CoarseView()

    def forward(
        self, level_input: Tensor, grid: tuple[int, int], selection: PixelSelection, lower: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        fine, fine_outputs = self.fine_encoder(split_patches(level_input, grid))
        fine = merge_patches(fine, grid)
        fine_outputs = [[merge_patches(output, grid) for output in scale] for scale in fine_outputs]
        x = self.lift(fine, selection)
        encoded = []
        for block in self.encoder_blocks:
            x = block(x, fine, selection)
            encoded.append(x)
        if lower is not None:
            lower_points = _read_cells(lower, selection)
            if self.cross_level is not None:  # CLA: maps from this level, attended features from below
                x = x + self.cross_level(_as_map(x), _as_map(lower_points), valid=selection.anchor_mask()).squeeze(2)
            else:
                x = x + lower_points
        y = x
        for index, block in enumerate(self.decoder_blocks):
            y = block(y, fine, selection, encoded[len(encoded) - 1 - index] if self.cross_attention else None)
        scattered, coverage = self.scatter(self.project(y), selection)
        merged = self.merge(scattered, coverage, fine)
        decoded = self.fine_decoder(merged, fine_outputs if self.cross_attention else None)
        return decoded, self.view(x, selection)


class _SampledDMPHNLevel(nn.Module):
    """One sampled DMPHN stage: finer encoder scales on patches, the deepest scale on the set."""

    def __init__(self, widths: Sequence[int], blocks: int, image_channels: int) -> None:
        super().__init__()
        channels, fine_channels = widths[-1], widths[-2]
        self.fine_encoder = DMPHNEncoder(widths[:-1], blocks, image_channels)
        self.lift = PointConv(fine_channels, channels)
        self.encoder_blocks = nn.Sequential(*(SetResBlock(channels) for _ in range(blocks)))
        self.decoder_blocks = nn.Sequential(*(SetResBlock(channels) for _ in range(blocks)))
        self.project = nn.Conv1d(channels, fine_channels, 1)
        self.scatter = PointScatter()
        self.merge = SkipMerge(fine_channels)
        self.fine_decoder = DMPHNDecoder(widths[:-1], blocks, image_channels)
        self.view = _CoarseView()

    def forward(
        self, level_input: Tensor, grid: tuple[int, int], selection: PixelSelection, lower: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        fine = merge_patches(self.fine_encoder(split_patches(level_input, grid)), grid)
        x = self.encoder_blocks(self.lift(fine, selection))
        if lower is not None:  # DMPHN's sum of the level below's features
            x = x + _read_cells(lower, selection)
        scattered, coverage = self.scatter(self.project(self.decoder_blocks(x)), selection)
        decoded = self.fine_decoder(self.merge(scattered, coverage, fine))
        return decoded, self.view(x, selection)


# --------------------------------------------------------------------------------------------------
# The models


class SampledHierarchy(nn.Module):
    """The stage loop shared by :class:`SAPHNetAS` and :class:`DMPHNAS` (see the module docstring).

    Subclasses build ``self.bottom`` (stage 1, uniform: ``bottom(padded) -> (residual, deepest-grid
    features)`` on whole images) and ``self.sampled`` (one sampled level per other level, top first,
    ``level(level_input, grid, selection, lower) -> (residual, coarse view)``).
    """

    levels: tuple[int, ...]
    image_channels: int
    size_multiple: int

    def _init_hierarchy(
        self, levels: Sequence[int], widths: Sequence[int], image_channels: int, *, sampling: str, budget: float,
        anchor_stride: int, policy: str, policy_channels: int, policy_layers: int,
    ) -> None:  # fmt: skip
        """What both subclasses set first: levels, padding multiple, the sampling mode and the policy heads."""
        self.levels = check_levels(levels)
        self.image_channels = image_channels
        self.size_multiple = hierarchy_size_multiple(self.levels, 2 ** (len(widths) - 1))
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if len(widths) < 2:
            raise ValueError(f"widths must name at least two scales (a finer map to sample from), got {tuple(widths)}")
        self.sampling, self.policy = sampling, policy
        self.depth = 2 ** (len(widths) - 1)  # s: the deepest scale's downsampling
        self.selection_scale = self.depth // 2
        sampler_options = {
            "selection_scale": self.selection_scale, "budget": budget, "anchor_stride": anchor_stride,
            "hidden_channels": policy_channels, "num_layers": policy_layers,
        }  # fmt: skip
        self.samplers = nn.ModuleList(PixelSampler(self.image_channels, **sampler_options) for _ in self.levels[:-1])

    def _resolve_policy(self, policy: str | None) -> str:
        if self.sampling == "uniform":
            return "uniform"
        if policy is None:  # eval: top-K, unless the policy is not trained yet (pre-training: uniform)
            return self.policy if self.training or self.policy == "uniform" else "top-k"
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        return policy

    def forward(
        self,
        image: Tensor,
        *,
        return_aux: bool = False,
        policy: str | None = None,
        generator: torch.Generator | int | None = None,
        selection_scores: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Any]]:
        """(B, 3, H, W) -> (B, 3, H, W), any H and W (padded inside); with ``return_aux``, ``(restored, aux)``.

        ``selection_scores`` (B, 1, H, W), optional: replaces both policy heads' logits (higher is chosen
        first; area-averaged to the selection grid; padding scores 0), to measure what a given choice of
        pixels is worth, e.g. the ground-truth blur mask with ``policy="top-k"`` (an oracle policy).
        Ignored by the lattice (``policy="uniform"``, and always in ``sampling="uniform"`` models).
        """
        check_image_batch(image, self.image_channels)
        height, width = image.shape[-2:]
        policy = self._resolve_policy(policy)
        if selection_scores is not None:
            if selection_scores.shape != (image.shape[0], 1, height, width):
                raise ValueError(
                    f"selection_scores must be (B, 1, H, W) = {(image.shape[0], 1, height, width)}, "
                    f"got {tuple(selection_scores.shape)}"
                )
            selection_scores = pad_to_multiple(selection_scores.to(image.device, image.dtype), self.size_multiple)
        padded = pad_to_multiple(image, self.size_multiple)
        coarse_size = (padded.shape[-2] // self.depth, padded.shape[-1] // self.depth)
        lower_output, lower = self.bottom(padded)
        stage_outputs = [padded + lower_output]
        selections: list[PixelSelection] = []
        for index in reversed(range(len(self.sampled))):  # bottom-up: stage 2, then stage 3
            selection = self.samplers[index](
                stage_outputs[-1].detach(), coarse_size, policy=policy, generator=generator, scores=selection_scores
            )
            grid = patch_grid(self.levels[index])
            lower_output, lower = self.sampled[index](padded + lower_output, grid, selection, lower)
            stage_outputs.append(padded + lower_output)
            selections.append(selection)
        restored = stage_outputs[-1][..., :height, :width].contiguous()
        if not return_aux:
            return restored
        aux = {
            "stage_outputs": [output[..., :height, :width] for output in stage_outputs],
            "pixel_index": [selection.pixel_index for selection in selections],
            "log_prob": [selection.log_prob for selection in selections],
            "policy_logits": [selection.logits for selection in selections],
            "count": selections[0].pixel_index.shape[1] if selections else 0,
            "num_anchors": selections[0].num_anchors if selections else 0,
            "selection_size": selections[0].selection_size if selections else (0, 0),
            "selection_scale": self.selection_scale,
            "image_size": (height, width),
        }
        return restored, aux

    def extra_maps(self, aux: dict[str, Any]) -> dict[str, Tensor]:
        """``sampled_pixels_stage<n>`` (B, 1, H, W): 1 on the input pixels whose selection-grid pixel
        was processed in stage n (each covers selection_scale x selection_scale input pixels), and
        ``sampling_probability_stage<n>``: the policy's P (adaptive policies only)."""
        maps: dict[str, Tensor] = {}
        height, width = aux["image_size"]
        scale = aux["selection_scale"]
        for stage, (index, logits) in enumerate(zip(aux["pixel_index"], aux["policy_logits"]), start=2):
            mask = pixel_index_to_mask(index, aux["selection_size"]).to(index.device)
            maps[f"sampled_pixels_stage{stage}"] = _to_input(mask, scale, height, width)
            if logits is not None:
                maps[f"sampling_probability_stage{stage}"] = _to_input(torch.sigmoid(logits), scale, height, width)
        return maps


def _to_input(values: Tensor, scale: int, height: int, width: int) -> Tensor:
    """Selection-grid map -> input pixels: each value repeated scale x scale, cropped to the image."""
    if scale > 1:
        values = values.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return values[..., :height, :width].float()


class SAPHNetAS(SampledHierarchy):
    """SAPHNet with pixel-adaptive sampling: (B, 3, H, W) in [0, 1] -> (B, 3, H, W).

    Args:
        levels, widths, blocks, clusters, cross_attention, cross_level_attention, max_displacement,
            gate_input, kernel_size, image_channels: as :class:`~adeblur.models.saphnet.SAPHNet`
            (the stage-1 level is a SAPHNet level with all its switches on; ``blocks[-1]`` counts the
            set blocks of the sampled levels).
        sampling: ``"adaptive"`` or ``"uniform"`` (the regular lattice at the same K, for comparison).
        budget: multiplier of K = (H / s)(W / s) (Table V).
        anchor_stride: anchors (attention step 1) every ``anchor_stride``-th lattice row/column.
        policy: the selection in training mode when ``forward`` is not told (``"uniform"`` for the
            pre-training phase, ``"sample"`` needs a generator in ``forward``, ``"top-k"``).
        policy_channels, policy_layers: the policy heads' width and depth.

    >>> model = SAPHNetAS(widths=(4, 8), blocks=(1, 1), clusters=2)
    >>> restored, aux = model(torch.rand(1, 3, 10, 13), return_aux=True)
    >>> restored.shape, len(aux["stage_outputs"]), aux["count"]  # padded to 12 x 16, s = 2: K = 6 * 8
    (torch.Size([1, 3, 10, 13]), 3, 48)
    """

    def __init__(
        self,
        levels: Sequence[int] = (1, 2, 4),
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (0, 0, 3),
        clusters: int = 16,
        *,
        cross_attention: bool = True,
        cross_level_attention: bool = True,
        max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
        gate_input: str = "pooled",
        kernel_size: int = 5,
        sampling: str = "adaptive",
        budget: float = 1.0,
        anchor_stride: int = 2,
        policy: str = "top-k",
        policy_channels: int = 32,
        policy_layers: int = 3,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        if not widths or len(blocks) != len(widths):
            raise ValueError(f"blocks {tuple(blocks)} must give one count per width {tuple(widths)}")
        self.cross_attention = cross_attention
        self._init_hierarchy(
            levels, widths, image_channels, sampling=sampling, budget=budget, anchor_stride=anchor_stride, policy=policy,
            policy_channels=policy_channels, policy_layers=policy_layers,
        )  # fmt: skip
        module_options = {
            "clusters": clusters, "max_displacement": max_displacement, "gate_input": gate_input, "kernel_size": kernel_size,
        }  # fmt: skip
        self.bottom_encoder = SAPHNetEncoder(widths, blocks, image_channels, **module_options)
        self.bottom_decoder = SAPHNetDecoder(widths, blocks, image_channels, cross_attention=cross_attention, **module_options)
        level_options = {
            "cross_attention": cross_attention, "cross_level_attention": cross_level_attention,
            "module_options": module_options, "set_options": module_options,
        }  # fmt: skip
        self.sampled = nn.ModuleList(
            _SampledSAPHNetLevel(widths, blocks, image_channels, **level_options) for _ in self.levels[:-1]
        )

    def bottom(self, padded: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 1, SAPHNet's bottom level: (residual, features on the deepest grid), whole images."""
        grid = patch_grid(self.levels[-1])
        decode_grid = patch_grid(self.levels[max(len(self.levels) - 2, 0)])
        features, outputs = self.bottom_encoder(split_patches(padded, grid))
        features = regrid(features, grid, decode_grid)
        encoder_outputs = None
        if self.cross_attention:
            encoder_outputs = [[regrid(output, grid, decode_grid) for output in scale] for scale in outputs]
        decoded = self.bottom_decoder(features, encoder_outputs)
        return merge_patches(decoded, decode_grid), merge_patches(features, decode_grid)


class DMPHNAS(SampledHierarchy):
    """DMPHN with the pixel-adaptive sampling of :class:`SAPHNetAS` (TPAMI Table VI, plug-and-play).

    Args:
        levels, widths, blocks, image_channels: as :class:`~adeblur.models.dmphn.DMPHN`.
        sampling, budget, anchor_stride, policy, policy_channels, policy_layers: as :class:`SAPHNetAS`.

    >>> model = DMPHNAS(widths=(4, 8, 16), blocks=1)
    >>> model(torch.rand(1, 3, 10, 13)).shape
    torch.Size([1, 3, 10, 13])
    """

    def __init__(
        self,
        levels: Sequence[int] = (1, 2, 4),
        widths: Sequence[int] = (32, 64, 128),
        blocks: int = 2,
        *,
        sampling: str = "adaptive",
        budget: float = 1.0,
        anchor_stride: int = 2,
        policy: str = "top-k",
        policy_channels: int = 32,
        policy_layers: int = 3,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        self._init_hierarchy(
            levels, widths, image_channels, sampling=sampling, budget=budget, anchor_stride=anchor_stride, policy=policy,
            policy_channels=policy_channels, policy_layers=policy_layers,
        )  # fmt: skip
        self.bottom_encoder = DMPHNEncoder(widths, blocks, image_channels)
        self.bottom_decoder = DMPHNDecoder(widths, blocks, image_channels)
        self.sampled = nn.ModuleList(_SampledDMPHNLevel(widths, blocks, image_channels) for _ in self.levels[:-1])

    def bottom(self, padded: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 1, DMPHN's bottom level: (residual, features on the deepest grid), whole images."""
        grid = patch_grid(self.levels[-1])
        decode_grid = patch_grid(self.levels[max(len(self.levels) - 2, 0)])
        features = merge_patches(self.bottom_encoder(split_patches(padded, grid)), grid)
        decoded = self.bottom_decoder(split_patches(features, decode_grid))
        return merge_patches(decoded, decode_grid), features
