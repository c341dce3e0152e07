"""Modulated deformable convolution (DCNv2), pure PyTorch, with reusable sampling plans.

Semantics are torchvision's ``torchvision.ops.deform_conv2d`` (Dai et al. 2017; Zhu et al. 2019):

* ``input`` (B, Cin, H, W), ``weight`` (Cout, Cin // groups, kh, kw); ``groups`` comes from the weight.
* ``offset`` (B, 2 * G * kh * kw, Ho, Wo), ``G`` = offset groups (contiguous blocks of Cin / G input
  channels). For group g and tap k = i * kw + j (raster order), channel ``2 * (g * kh * kw + k)`` holds
  the **y** (down) offset and the next channel the **x** (right) offset, in pixels.
* ``mask`` (B, G * kh * kw, Ho, Wo), optional modulation scalar per tap (DCNv2); channel ``g * kh * kw + k``.
* Output pixel (oy, ox), tap (i, j) samples the input at
  ``(oy * stride - padding + i * dilation + dy, ox * stride - padding + j * dilation + dx)``
  bilinearly; every bilinear corner outside the image reads zero (zero padding).

Implementation: a *sampling plan* stores, for each output pixel, tap and bilinear corner, the row of
the input seen as a (B * H * W, Cin) channels-last table and the corner's weight (bilinear weight x
modulation, zero outside the image). Applying a plan is one fused gather-and-weighted-sum per tap
(:func:`torch.nn.functional.embedding_bag` with ``per_sample_weights``), run over cache-sized chunks
of output pixels; the depthwise case then multiplies by the tap weights, the general case contracts
the gathered columns with the reshaped weight. A plan can be built once and reused by every
convolution that samples the same positions (M2AENet: all blocks of a scale share one offset field),
and can cover only a subset of output pixels (e.g. the blurred ones). See ``docs/ops.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DeformConv2d",
    "SamplingPlan",
    "build_sampling_plan",
    "deform_conv2d",
    "deform_conv2d_macs",
    "deform_conv2d_planned",
    "gather_pixels",
    "mask_to_pixel_index",
    "scatter_pixels",
    "torchvision_deform_conv2d_usable",
]

#: Default bound, in bytes, on the intermediates :func:`deform_conv2d` allocates per chunk of pixels.
DEFAULT_CHUNK_BYTES = 64 * 2**20
# Gathered values per inner chunk: small enough to stay in the CPU cache (measured on 64 channels at
# 360x640 and 512 at 90x160: 4 MiB chunks beat 16 MiB ones and run ~3x faster than 64 MiB ones).
_CACHE_BYTES = 4 * 2**20

_Pair = tuple[int, int]


def _pair(value: int | tuple[int, int], name: str) -> _Pair:
    # torch.SymInt: symbolic image sizes while exporting with dynamic shapes (ONNX, torch.export)
    if isinstance(value, (int, torch.SymInt)):
        return (value, value)
    if len(value) != 2 or not all(isinstance(v, (int, torch.SymInt)) for v in value):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (value[0], value[1])


def mask_to_pixel_index(mask: Tensor) -> Tensor:
    """Flat indices ``b * H * W + y * W + x`` of the pixels where ``mask > 0.5``.

    Args:
        mask: (B, 1, H, W) blur mask in {0, 1}.

    Returns:
        (Q,) int64 indices in increasing order, on the mask's device.

    >>> mask = torch.zeros(2, 1, 2, 3); mask[0, 0, 1, 2] = 1; mask[1, 0, 0, 0] = 1
    >>> mask_to_pixel_index(mask)
    tensor([5, 6])
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got shape {tuple(mask.shape)}")
    return torch.nonzero(mask.reshape(-1) > 0.5).squeeze(1)


def _pixel_rows_view(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H * W, C) view (no copy, whichever of NCHW / channels_last ``x`` uses)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def gather_pixels(x: Tensor, pixel_index: Tensor) -> Tensor:
    """Rows ``x[b, :, y, x]`` for flat pixel indices ``b * H * W + y * W + x``.

    Args:
        x: (B, C, H, W), NCHW or channels_last.
        pixel_index: (Q,) int64 flat indices, e.g. from :func:`mask_to_pixel_index`.

    Returns:
        (Q, C).

    >>> x = torch.arange(8.0).view(1, 2, 2, 2)
    >>> gather_pixels(x, torch.tensor([0, 3]))
    tensor([[0., 4.],
            [3., 7.]])
    """
    hw = x.shape[2] * x.shape[3]
    return _pixel_rows_view(x)[pixel_index // hw, pixel_index % hw]


def scatter_pixels(base: Tensor, pixel_index: Tensor, rows: Tensor) -> Tensor:
    """Copy of ``base`` (B, C, H, W) whose pixels ``pixel_index`` are replaced by ``rows`` (Q, C).

    The copy keeps ``base``'s memory format; differentiable w.r.t. ``base`` and ``rows``.

    >>> scatter_pixels(torch.zeros(1, 2, 1, 2), torch.tensor([1]), torch.tensor([[5.0, 6.0]]))
    tensor([[[[0., 5.]],
    <BLANKLINE>
             [[0., 6.]]]])
    """
    return _scatter_pixels_(base.clone(), pixel_index, rows)


def _scatter_pixels_(base: Tensor, pixel_index: Tensor, rows: Tensor) -> Tensor:
    """In-place :func:`scatter_pixels` (for freshly allocated ``base``)."""
    if rows.shape != (pixel_index.shape[0], base.shape[1]):
        raise ValueError(f"rows must be (Q={pixel_index.shape[0]}, C={base.shape[1]}), got {tuple(rows.shape)}")
    hw = base.shape[2] * base.shape[3]
    _pixel_rows_view(base).index_put_((pixel_index // hw, pixel_index % hw), rows.to(base.dtype))
    return base


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """Where and with which weights a deformable convolution samples its input.

    Built by :func:`build_sampling_plan`, consumed by :func:`deform_conv2d_planned` (and
    :class:`DeformConv2d` via ``plan=``). The input is read as a (B * H * W, Cin) table of pixels.

    Attributes:
        index: (G, Q, K, 4) int32/int64 table rows of the 4 bilinear corners of every tap
            (corners outside the image point at a valid row and have zero weight).
        weight: (G, Q, K, 4) corner weights = bilinear weight x modulation; differentiable w.r.t.
            the offsets and the modulation mask the plan was built from.
        pixel_index: (Q,) int64 flat output pixels ``b * Ho * Wo + y * Wo + x``; ``None`` means all
            B * Ho * Wo output pixels in order.
        batch_size, input_size, output_size, kernel_size, stride, padding, dilation: the geometry.
    """

    index: Tensor
    weight: Tensor
    pixel_index: Tensor | None
    batch_size: int
    input_size: _Pair
    output_size: _Pair
    kernel_size: _Pair
    stride: _Pair
    padding: _Pair
    dilation: _Pair

    @property
    def offset_groups(self) -> int:
        return self.index.shape[0]

    @property
    def num_pixels(self) -> int:
        """Number of output pixels the plan computes (Q)."""
        return self.index.shape[1]

    @property
    def nbytes(self) -> int:
        """Memory held by the plan's tensors."""
        held = self.index.numel() * self.index.element_size() + self.weight.numel() * self.weight.element_size()
        if self.pixel_index is not None:
            held += self.pixel_index.numel() * self.pixel_index.element_size()
        return held


def _output_size(input_size: _Pair, kernel_size: _Pair, stride: _Pair, padding: _Pair, dilation: _Pair) -> _Pair:
    return tuple(  # type: ignore[return-value]
        (input_size[d] + 2 * padding[d] - dilation[d] * (kernel_size[d] - 1) - 1) // stride[d] + 1 for d in range(2)
    )


def _plan_rows(
    offset_rows: Tensor,
    mask_rows: Tensor | None,
    pixel_index: Tensor,
    batch_size: int,
    input_size: _Pair,
    output_size: _Pair,
    kernel_size: _Pair,
    stride: _Pair,
    padding: _Pair,
    dilation: _Pair,
) -> tuple[Tensor, Tensor]:
    """Corner rows and weights (G, Q, K, 4) for output pixels ``pixel_index`` (Q,).

    ``offset_rows`` (Q, G, K, 2) holds (dy, dx) per tap, ``mask_rows`` (Q, G, K) the modulation.
    """
    height, width = input_size
    out_w = output_size[1]
    device = offset_rows.device
    out_hw = output_size[0] * out_w
    # int32 index arithmetic when every input row and output pixel number fits (halves the index memory)
    # (int64 while exporting: ONNX gathers and exporters expect int64 indices)
    small = batch_size * max(height * width, out_hw) < 2**31
    index_dtype = torch.int32 if small and not torch.compiler.is_exporting() else torch.int64
    pixels = pixel_index.to(index_dtype)
    rows = pixels // out_w  # b * Ho + y (floor divisions and products only: they export to ONNX)
    out_x = pixels - rows * out_w
    out_b = rows // output_size[0]
    out_y = rows - out_b * output_size[0]
    tap_y = torch.arange(kernel_size[0], device=device, dtype=index_dtype).repeat_interleave(kernel_size[1])
    tap_x = torch.arange(kernel_size[1], device=device, dtype=index_dtype).repeat(kernel_size[0])
    base_y = (out_y * stride[0] - padding[0])[:, None, None] + tap_y * dilation[0]  # (Q, 1, K) grid position
    base_x = (out_x * stride[1] - padding[1])[:, None, None] + tap_x * dilation[1]
    if offset_rows.element_size() < 4:  # half precision cannot hold large pixel coordinates exactly
        offset_rows = offset_rows.float()
    offset_y, offset_x = offset_rows.unbind(-1)  # (Q, G, K)
    # Integer and fractional parts apart, so that the bilinear weights keep full precision however
    # large the image; clamping the (exact, integer-valued) float corner keeps far taps outside.
    floor_y, floor_x = offset_y.floor(), offset_x.floor()
    frac_y, frac_x = offset_y - floor_y, offset_x - floor_x
    y0 = (floor_y + base_y).clamp_(-2, height).to(index_dtype)
    x0 = (floor_x + base_x).clamp_(-2, width).to(index_dtype)
    # A corner row/column is inside the image iff clamping it into the image leaves it unchanged;
    # outside corners read the clamped (valid) row with zero weight.
    row0, row1 = y0.clamp(0, height - 1), (y0 + 1).clamp_(0, height - 1)
    col0, col1 = x0.clamp(0, width - 1), (x0 + 1).clamp_(0, width - 1)
    weight_y0 = (1 - frac_y) * (row0 == y0)
    weight_y1 = frac_y * (row1 == y0 + 1)
    weight_x0 = (1 - frac_x) * (col0 == x0)
    weight_x1 = frac_x * (col1 == x0 + 1)
    # corners in order (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)
    weight = torch.stack(
        (weight_y0 * weight_x0, weight_y0 * weight_x1, weight_y1 * weight_x0, weight_y1 * weight_x1), -1
    )
    if mask_rows is not None:
        weight = weight * mask_rows.unsqueeze(-1)
    batch_row = (out_b * (height * width))[:, None, None]
    row0 = row0.mul_(width).add_(batch_row)
    row1 = row1.mul_(width).add_(batch_row)
    index = torch.stack((row0 + col0, row0 + col1, row1 + col0, row1 + col1), -1)
    return index.permute(1, 0, 2, 3).contiguous(), weight.permute(1, 0, 2, 3).contiguous()


def _check_offset_mask(
    offset: Tensor, mask: Tensor | None, taps: int, batch_size: int, output_size: _Pair
) -> int:
    if offset.dim() != 4 or offset.shape[1] % (2 * taps) or offset.shape[1] == 0:
        raise ValueError(f"offset must be (B, 2 * offset_groups * {taps}, Ho, Wo), got shape {tuple(offset.shape)}")
    if offset.shape[0] != batch_size or tuple(offset.shape[2:]) != output_size:
        raise ValueError(
            f"offset shape {tuple(offset.shape)} does not match batch {batch_size} and output size {output_size}"
        )
    if not offset.is_floating_point():
        raise TypeError(f"offset must be floating point, got {offset.dtype}")
    groups = offset.shape[1] // (2 * taps)
    if mask is not None and tuple(mask.shape) != (batch_size, groups * taps, *output_size):
        raise ValueError(
            f"mask must be (B, offset_groups * kh * kw, Ho, Wo) = {(batch_size, groups * taps, *output_size)}, "
            f"got {tuple(mask.shape)}"
        )
    return groups


def build_sampling_plan(
    offset: Tensor,
    input_size: tuple[int, int],
    kernel_size: int | tuple[int, int],
    *,
    mask: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    pixel_index: Tensor | None = None,
) -> SamplingPlan:
    """Precompute the bilinear sampling of a deformable convolution, to reuse across convolutions.

    Args:
        offset: (B, 2 * G * kh * kw, Ho, Wo) offsets in pixels, (dy, dx) per tap (torchvision layout).
        input_size: (H, W) of the inputs the plan will be applied to.
        kernel_size, stride, padding, dilation: the convolution geometry (ints or pairs).
        mask: optional (B, G * kh * kw, Ho, Wo) modulation (DCNv2), folded into the plan's weights.
        pixel_index: optional (Q,) int64 flat output pixels ``b * Ho * Wo + y * Wo + x`` to compute
            (e.g. :func:`mask_to_pixel_index` of a blur mask); default all.

    Returns:
        A :class:`SamplingPlan`, ``plan.nbytes`` ~ 32 * G * kh * kw bytes per output pixel (float32).

    >>> offset = torch.zeros(1, 18, 4, 4)
    >>> plan = build_sampling_plan(offset, (4, 4), 3, padding=1)
    >>> plan.index.shape, plan.num_pixels
    (torch.Size([1, 16, 9, 4]), 16)
    """
    kernel = _pair(kernel_size, "kernel_size")
    stride_, padding_, dilation_ = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    input_hw = _pair(tuple(input_size), "input_size")  # type: ignore[arg-type]
    output_size = _output_size(input_hw, kernel, stride_, padding_, dilation_)
    if min(output_size) < 1:
        raise ValueError(
            f"input size {input_hw} is too small for kernel {kernel}, padding {padding_}, dilation {dilation_}"
        )
    batch_size = offset.shape[0]
    taps = kernel[0] * kernel[1]
    groups = _check_offset_mask(offset, mask, taps, batch_size, output_size)
    out_hw = output_size[0] * output_size[1]
    if pixel_index is None:
        pixels = torch.arange(batch_size * out_hw, device=offset.device)
    else:
        if pixel_index.dim() != 1 or pixel_index.dtype != torch.int64:
            raise ValueError(
                f"pixel_index must be a 1-D int64 tensor, got {pixel_index.dtype} {tuple(pixel_index.shape)}"
            )
        pixels = pixel_index
    offset_rows = _select_pixels(offset, pixel_index).view(-1, groups, taps, 2)
    mask_rows = None if mask is None else _select_pixels(mask, pixel_index).view(-1, groups, taps)
    index, weight = _plan_rows(
        offset_rows, mask_rows, pixels, batch_size, input_hw, output_size, kernel, stride_, padding_, dilation_
    )
    return SamplingPlan(
        index, weight, pixel_index, batch_size, input_hw, output_size, kernel, stride_, padding_, dilation_
    )


def _select_pixels(x: Tensor, pixel_index: Tensor | None) -> Tensor:
    """(B, C, H, W) -> (Q, C) rows at ``pixel_index`` (all pixels in order when None)."""
    if pixel_index is None:
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return gather_pixels(x, pixel_index)


def _pixel_table(input: Tensor) -> Tensor:
    """(B, C, H, W) -> contiguous (B * H * W, C) table (free for channels_last inputs)."""
    return input.permute(0, 2, 3, 1).reshape(-1, input.shape[1]).contiguous()


def _group_tables(table: Tensor, groups: int) -> list[Tensor]:
    if groups == 1:
        return [table]
    return [part.contiguous() for part in table.chunk(groups, dim=1)]


def _gather_taps(table: Tensor, index: Tensor, weight: Tensor | None) -> Tensor:
    """(Q, K, J) rows/weights -> (Q, K, C): per tap, the (weighted) sum of its J gathered rows."""
    q, k, j = index.shape
    if torch.compiler.is_exporting():  # plain gathers: ONNX has no weighted embedding bag
        rows = table[index]  # (Q, K, J, C)
        return rows.sum(2) if weight is None else (rows * weight.unsqueeze(-1)).sum(2)
    per_sample = None if weight is None else weight.reshape(q * k, j)
    summed = F.embedding_bag(index.reshape(q * k, j), table, per_sample_weights=per_sample, mode="sum")
    return summed.view(q, k, table.shape[1])


def _apply_rows(tables: list[Tensor], index: Tensor, weight: Tensor | None, conv_weight: Tensor) -> Tensor:
    """Deformable convolution (no bias) at the plan's Q pixels -> (Q, Cout).

    ``tables``: one (R, Cin / G) table of pixels per offset group; ``index``/``weight`` (G, Q, K, J)
    rows of those tables and their weights (``None``: all ones).
    """
    groups_off, q, k, _ = index.shape
    out_channels, in_per_group = conv_weight.shape[:2]
    in_channels = sum(t.shape[1] for t in tables)
    conv_groups = in_channels // in_per_group
    depthwise = conv_groups == in_channels == out_channels
    weight = None if weight is None else weight.to(tables[0].dtype)
    out = tables[0].new_empty(q, out_channels)
    chunk = max(1, _CACHE_BYTES // (k * in_channels * tables[0].element_size()))
    if torch.compiler.is_exporting():  # one chunk: Q is symbolic (dynamic image size), the graph loop-free
        chunk = q
    if depthwise:
        tap_weight = conv_weight.reshape(out_channels, k).t().contiguous()  # (K, C)
        needs_grad = [conv_weight, *tables] + ([] if weight is None else [weight])
        in_place = not (torch.is_grad_enabled() and any(t.requires_grad for t in needs_grad))
        in_place = in_place and not torch.compiler.is_exporting()
    else:
        # (Cout, Cin_g, kh, kw) -> (conv_groups, Cout_g, K, Cin_g) to match columns (Q, K, conv_groups, Cin_g)
        group_weight = conv_weight.reshape(conv_groups, out_channels // conv_groups, in_per_group, k).transpose(2, 3)
    for start in range(0, q, chunk):
        stop = min(q, start + chunk)
        if depthwise:
            channel = 0
            for g in range(groups_off):
                width = tables[g].shape[1]
                taps = _gather_taps(tables[g], index[g, start:stop], None if weight is None else weight[g, start:stop])
                # sum_k W[c, k] * sample_k[c]; in place without autograd (one temporary less)
                part = tap_weight[:, channel : channel + width]
                if in_place:
                    torch.sum(taps.mul_(part), 1, out=out[start:stop, channel : channel + width])
                else:
                    out[start:stop, channel : channel + width] = (taps * part).sum(1)
                channel += width
        else:
            columns = torch.cat(
                [
                    _gather_taps(tables[g], index[g, start:stop], None if weight is None else weight[g, start:stop])
                    for g in range(groups_off)
                ],
                -1,
            )
            columns = columns.view(stop - start, k, conv_groups, in_per_group)
            out[start:stop] = torch.einsum("qkgc,gokc->qgo", columns, group_weight).reshape(stop - start, out_channels)
    return out


def _check_weight(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if input.dim() != 4:
        raise ValueError(f"input must be (B, C, H, W), got shape {tuple(input.shape)}")
    if weight.dim() != 4 or input.shape[1] % weight.shape[1] or weight.shape[0] % (input.shape[1] // weight.shape[1]):
        raise ValueError(
            f"weight must be (Cout, Cin / groups, kh, kw) with groups dividing Cin={input.shape[1]} and Cout, "
            f"got shape {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},), got shape {tuple(bias.shape)}")


def deform_conv2d_planned(
    input: Tensor, plan: SamplingPlan, weight: Tensor, bias: Tensor | None = None, *, background: Tensor | None = None
) -> Tensor:
    """Deformable convolution that samples as ``plan`` says (see :func:`build_sampling_plan`).

    Args:
        input: (B, Cin, H, W); channels_last avoids one transposing copy.
        plan: a :class:`SamplingPlan` for this batch size and (H, W).
        weight: (Cout, Cin / groups, kh, kw) matching the plan's kernel size; depthwise
            (groups = Cin = Cout) takes a fast path.
        bias: optional (Cout,).
        background: (B, Cout, Ho, Wo) values of the output pixels the plan does not cover (only
            for plans built with ``pixel_index``); default zeros.

    Returns:
        (B, Cout, Ho, Wo), channels_last-strided unless ``background`` gives the layout.

    >>> x = torch.rand(1, 4, 5, 5)
    >>> plan = build_sampling_plan(torch.zeros(1, 18, 5, 5), (5, 5), 3, padding=1)
    >>> w = torch.rand(4, 1, 3, 3)
    >>> torch.allclose(deform_conv2d_planned(x, plan, w), F.conv2d(x, w, padding=1, groups=4), atol=1e-6)
    True
    """
    _check_weight(input, weight, bias)
    if (input.shape[0], *input.shape[2:]) != (plan.batch_size, *plan.input_size):
        raise ValueError(
            f"plan was built for batch {plan.batch_size} and input size {plan.input_size}, "
            f"got input of shape {tuple(input.shape)}"
        )
    if tuple(weight.shape[2:]) != plan.kernel_size:
        raise ValueError(f"weight kernel {tuple(weight.shape[2:])} does not match the plan's {plan.kernel_size}")
    if input.shape[1] % plan.offset_groups:
        raise ValueError(f"offset groups {plan.offset_groups} must divide the input channels {input.shape[1]}")
    out_channels = weight.shape[0]
    rows = _apply_rows(
        _group_tables(_pixel_table(input), plan.offset_groups), plan.index, plan.weight, weight.to(input.dtype)
    )
    if bias is not None:
        rows = rows + bias.to(rows.dtype)
    out_h, out_w = plan.output_size
    if plan.pixel_index is None:
        if background is not None:
            raise ValueError("background is only used with plans built for a subset of pixels (pixel_index)")
        return rows.view(plan.batch_size, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    expected = (plan.batch_size, out_channels, out_h, out_w)
    if background is None:
        zeros = rows.new_zeros(plan.batch_size, out_h, out_w, out_channels).permute(0, 3, 1, 2)
        return _scatter_pixels_(zeros, plan.pixel_index, rows)
    if tuple(background.shape) != expected:
        raise ValueError(f"background must be {expected}, got shape {tuple(background.shape)}")
    return scatter_pixels(background, plan.pixel_index, rows)


@functools.lru_cache(maxsize=None)
def _torchvision_kernel(device_type: str) -> Callable[..., Tensor] | None:
    """``torchvision.ops.deform_conv2d`` if it imports and gives a known answer on ``device_type``."""
    try:
        from torchvision.ops import deform_conv2d as tv_deform_conv2d

        x = torch.arange(16.0, device=device_type).view(1, 1, 4, 4)
        offset = torch.zeros(1, 2, 4, 4, device=device_type)
        offset[:, 1] = 0.5  # half a pixel to the right: the mean of each pixel and its right neighbour
        out = tv_deform_conv2d(x, offset, torch.ones(1, 1, 1, 1, device=device_type))
        expected = F.pad((x[..., :-1] + x[..., 1:]) / 2, (0, 1)) + F.pad(x[..., -1:] / 2, (3, 0))
        if not torch.allclose(out, expected):
            return None
    except Exception:  # noqa: BLE001 - any failure (missing, ABI mismatch, no kernel for the device) means "not usable"
        return None
    return tv_deform_conv2d


def torchvision_deform_conv2d_usable(device: str | torch.device = "cpu") -> bool:
    """Whether ``torchvision.ops.deform_conv2d`` imports and runs correctly on ``device`` (probed once).

    >>> isinstance(torchvision_deform_conv2d_usable("cpu"), bool)
    True
    """
    return _torchvision_kernel(torch.device(device).type) is not None


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    backend: str = "auto",
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    """Modulated deformable 2-D convolution (DCNv2) with torchvision's conventions.

    Args:
        input: (B, Cin, H, W).
        offset: (B, 2 * G * kh * kw, Ho, Wo): (dy, dx) in pixels per offset group and tap (raster order).
        weight: (Cout, Cin / groups, kh, kw); ``groups`` is read from it. Depthwise is a fast path.
        bias: optional (Cout,).
        mask: optional (B, G * kh * kw, Ho, Wo) modulation scalars.
        stride, padding, dilation: ints or (h, w) pairs.
        backend: ``"auto"`` (torchvision's kernel when it imports and runs on this device, probed once,
            else the pure-PyTorch path), ``"torch"`` or ``"torchvision"``.
        max_chunk_bytes: bound on the pure-PyTorch path's per-chunk intermediates (sampling plan and
            gathered columns); besides them it allocates one (B * H * W, Cin) copy of the input
            (none for a channels_last input) and the output.

    Returns:
        (B, Cout, Ho, Wo); channels_last-strided from the pure-PyTorch path.

    Zero offsets give an ordinary convolution:

    >>> x, w = torch.rand(2, 3, 6, 6), torch.rand(5, 3, 3, 3)
    >>> out = deform_conv2d(x, torch.zeros(2, 18, 6, 6), w, padding=1, backend="torch")
    >>> torch.allclose(out, F.conv2d(x, w, padding=1), atol=1e-5)
    True
    """
    _check_weight(input, weight, bias)
    kernel = (weight.shape[2], weight.shape[3])
    stride_, padding_, dilation_ = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    output_size = _output_size((input.shape[2], input.shape[3]), kernel, stride_, padding_, dilation_)
    if min(output_size) < 1:
        raise ValueError(f"input of shape {tuple(input.shape)} is too small for kernel {kernel} and padding {padding_}")
    taps = kernel[0] * kernel[1]
    groups_off = _check_offset_mask(offset, mask, taps, input.shape[0], output_size)
    if input.shape[1] % groups_off:
        raise ValueError(f"offset groups {groups_off} must divide the input channels {input.shape[1]}")
    if backend not in ("auto", "torch", "torchvision"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'torchvision', got {backend!r}")
    if backend != "torch":
        kernel_fn = _torchvision_kernel(input.device.type)
        if kernel_fn is not None:
            return kernel_fn(
                input, offset, weight, bias, stride=stride_, padding=padding_, dilation=dilation_, mask=mask
            )
        if backend == "torchvision":
            raise ValueError(f"torchvision.ops.deform_conv2d is not usable on device {input.device.type!r}")

    batch_size, in_channels = input.shape[:2]
    out_channels = weight.shape[0]
    tables = _group_tables(_pixel_table(input), groups_off)
    offset_view = _pixel_rows_view(offset)
    mask_view = None if mask is None else _pixel_rows_view(mask)
    # Bytes per output pixel: offsets and mask rows, the plan's rows + weights and their float
    # temporaries (~6 per corner), the depthwise/general columns, the output row.
    element = input.element_size()
    per_pixel = groups_off * taps * (3 * element + 4 * (8 + 6 * element)) + 2 * taps * in_channels * element
    chunk = max(1, max_chunk_bytes // per_pixel)
    total = batch_size * output_size[0] * output_size[1]
    out_hw = output_size[0] * output_size[1]
    weight = weight.to(input.dtype)
    pieces = []
    for start in range(0, total, chunk):
        pixels = torch.arange(start, min(total, start + chunk), device=input.device)
        batch, position = pixels // out_hw, pixels % out_hw
        offset_rows = offset_view[batch, position].view(-1, groups_off, taps, 2)
        mask_rows = None if mask_view is None else mask_view[batch, position].view(-1, groups_off, taps)
        index, corner_weight = _plan_rows(
            offset_rows, mask_rows, pixels, batch_size, tuple(input.shape[2:]), output_size, kernel,
            stride_, padding_, dilation_,
        )  # fmt: skip
        pieces.append(_apply_rows(tables, index, corner_weight, weight))
    rows = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    if bias is not None:
        rows = rows + bias.to(rows.dtype)
    return rows.view(batch_size, output_size[0], output_size[1], out_channels).permute(0, 3, 1, 2)


def deform_conv2d_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    num_output_pixels: int,
    *,
    groups: int = 1,
) -> int:
    """Multiply-accumulates of a deformable convolution, counted as the papers count convolutions.

    ``num_output_pixels`` = B * Ho * Wo (or a plan's Q). Counted: the convolution itself,
    Cout * (Cin / groups) * kh * kw per output pixel (as for a plain conv), plus bilinear sampling,
    4 MACs per sampled value (one per corner) and Cin * kh * kw sampled values per output pixel.
    Not counted (independent of the channel count, < 1% for Cin >= 8): the per-pixel coordinate and
    corner-weight arithmetic, the modulation (folded into the corner weights) and the bias.

    >>> deform_conv2d_macs(64, 64, 3, 100, groups=64)  # depthwise: (9 + 36) * 64 per pixel
    288000
    """
    kernel = _pair(kernel_size, "kernel_size")
    taps = kernel[0] * kernel[1]
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups {groups} must divide in_channels {in_channels} and out_channels {out_channels}")
    return num_output_pixels * taps * (out_channels * (in_channels // groups) + 4 * in_channels)


class DeformConv2d(nn.Module):
    """Modulated deformable convolution layer (weights like :class:`torch.nn.Conv2d`).

    ``forward(input, offset=None, mask=None, *, plan=None, background=None)``: either ``offset`` (and
    optional ``mask``) as in :func:`deform_conv2d`, or a prebuilt ``plan`` (see
    :func:`build_sampling_plan`, built with this layer's kernel size, stride, padding and dilation)
    as in :func:`deform_conv2d_planned`.

    >>> layer = DeformConv2d(8, 8, 3, padding=1, groups=8)
    >>> layer(torch.rand(1, 8, 6, 6), torch.zeros(1, 18, 6, 6)).shape
    torch.Size([1, 8, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups {groups} must divide in_channels {in_channels} and out_channels {out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        # Same parameters and initialisation as nn.Conv2d.
        template = nn.Conv2d(in_channels, out_channels, self.kernel_size, groups=groups, bias=bias)
        self.weight = template.weight
        self.bias = template.bias

    def forward(
        self,
        input: Tensor,
        offset: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        plan: SamplingPlan | None = None,
        background: Tensor | None = None,
    ) -> Tensor:
        if plan is None:
            if offset is None:
                raise ValueError("DeformConv2d needs either offset or plan")
            if background is not None:
                raise ValueError("background is only used with a plan")
            return deform_conv2d(
                input, offset, self.weight, self.bias, mask=mask,
                stride=self.stride, padding=self.padding, dilation=self.dilation,
            )  # fmt: skip
        if offset is not None or mask is not None:
            raise ValueError("pass either offset/mask or plan, not both")
        geometry = (plan.kernel_size, plan.stride, plan.padding, plan.dilation)
        if geometry != (self.kernel_size, self.stride, self.padding, self.dilation):
            raise ValueError(
                f"plan geometry (kernel, stride, padding, dilation) {geometry} does not match the layer's "
                f"{(self.kernel_size, self.stride, self.padding, self.dilation)}"
            )
        return deform_conv2d_planned(input, plan, self.weight, self.bias, background=background)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )
