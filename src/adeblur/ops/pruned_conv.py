"""Mask-aware convolution of the M2AS block (M2AENet, Eq. 5, Fig. 2b/2c), dense and pixel-pruned.

``f2 = Conv(f1) * m + Rep(f1) * (1 - m)`` where Conv = 1x1 convolution (C -> E*C) then k x k
depthwise convolution (zero padding k // 2, NAFNet's ``conv1``/``conv2``), ``m`` the blur mask and
Rep the channel repetition C -> E*C.

* Dense path (training, and the reference): exactly the formula above; differentiable w.r.t. the
  mask too (straight-through Gumbel-softmax masks need that).
* Pruned path (inference, Fig. 2c): the 1x1 runs only on the mask dilated by k // 2 pixels (the
  depthwise taps of a blurred pixel read those), the depthwise only at blurred pixels (gathering each
  neighbourhood, i.e. the paper's unfold + reshaped weights as a 1x1), and the results are scattered
  into Rep(f1). Neighbours outside the image read zero, as the dense conv's zero padding of the 1x1's
  output does (so the 1x1's bias never leaks into the border). Equals the dense path at every pixel
  up to float rounding; costs (dilated pixels) * C * E*C + (blurred pixels) * k*k * E*C MACs.

Rep order (the paper does not say): ``"tile"`` (default) gives channels (c0, c1, ..., c0, c1, ...),
``torch.Tensor.repeat``; ``"interleave"`` gives (c0, c0, c1, c1, ...). With NAFNet's SimpleGate,
which multiplies the first half of the channels by the second, ``"tile"`` pairs every channel with
itself on sharp pixels (SG(Rep(f1)) = f1 * f1); ``"interleave"`` would pair unrelated channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.ops.deform_conv import _apply_rows, _scatter_pixels_, gather_pixels, mask_to_pixel_index

__all__ = ["MaskAwareConv", "mask_aware_conv", "mask_aware_conv_macs", "repeat_channels"]


def repeat_channels(f1: Tensor, expand: int = 2, order: str = "tile") -> Tensor:
    """Rep of Eq. 5: (B, C, H, W) -> (B, expand * C, H, W).

    >>> x = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    >>> repeat_channels(x).flatten().tolist(), repeat_channels(x, order="interleave").flatten().tolist()
    ([1.0, 2.0, 1.0, 2.0], [1.0, 1.0, 2.0, 2.0])
    """
    if order not in ("tile", "interleave"):
        raise ValueError(f"repeat order must be 'tile' or 'interleave', got {order!r}")
    channels_last = f1.is_contiguous(memory_format=torch.channels_last) and not f1.is_contiguous()
    # repeat along the innermost dimension of the memory layout (a strided repeat is ~4x slower)
    source, dim = (f1.permute(0, 2, 3, 1), 3) if channels_last else (f1, 1)
    if order == "tile":
        repeated = source.repeat(*[expand if d == dim else 1 for d in range(4)])
    else:
        repeated = source.repeat_interleave(expand, dim=dim)
    return repeated.permute(0, 3, 1, 2) if channels_last else repeated


def _check(f1: Tensor, mask: Tensor, pointwise_weight: Tensor, depthwise_weight: Tensor) -> tuple[int, int]:
    if f1.dim() != 4:
        raise ValueError(f"f1 must be (B, C, H, W), got shape {tuple(f1.shape)}")
    batch, channels, height, width = f1.shape
    if tuple(mask.shape) != (batch, 1, height, width):
        raise ValueError(f"mask must be (B, 1, H, W) = {(batch, 1, height, width)}, got {tuple(mask.shape)}")
    expanded = pointwise_weight.shape[0]
    if tuple(pointwise_weight.shape) != (expanded, channels, 1, 1) or expanded % channels:
        raise ValueError(
            f"pointwise weight must be (E * C, C={channels}, 1, 1), got {tuple(pointwise_weight.shape)}"
        )
    kernel = depthwise_weight.shape[-1]
    if tuple(depthwise_weight.shape) != (expanded, 1, kernel, kernel) or kernel % 2 == 0:
        raise ValueError(
            f"depthwise weight must be ({expanded}, 1, k, k) with k odd, got {tuple(depthwise_weight.shape)}"
        )
    return expanded // channels, kernel


def mask_aware_conv(
    f1: Tensor,
    mask: Tensor,
    pointwise_weight: Tensor,
    pointwise_bias: Tensor | None,
    depthwise_weight: Tensor,
    depthwise_bias: Tensor | None,
    *,
    pruned: bool = False,
    repeat_order: str = "tile",
) -> Tensor:
    """Eq. 5: ``Conv(f1) * mask + Rep(f1) * (1 - mask)``, densely or only where the mask is set.

    Args:
        f1: (B, C, H, W) normalised block input.
        mask: (B, 1, H, W) blur mask in {0, 1} (1 = blurred); the pruned path selects ``mask > 0.5``.
        pointwise_weight, pointwise_bias: the 1x1 convolution, (E * C, C, 1, 1) and (E * C,) or None.
        depthwise_weight, depthwise_bias: the depthwise convolution, (E * C, 1, k, k) (k odd, zero
            padding k // 2) and (E * C,) or None.
        pruned: compute only at blurred pixels (inference; not differentiable w.r.t. the mask).
        repeat_order: ``"tile"`` or ``"interleave"`` (see :func:`repeat_channels`).

    Returns:
        (B, E * C, H, W); the pruned path returns Rep(f1)'s layout.

    >>> f1, mask = torch.rand(1, 2, 5, 5), (torch.rand(1, 1, 5, 5) > 0.5).float()
    >>> pw, dw = torch.rand(4, 2, 1, 1), torch.rand(4, 1, 3, 3)
    >>> dense = mask_aware_conv(f1, mask, pw, None, dw, None)
    >>> torch.allclose(mask_aware_conv(f1, mask, pw, None, dw, None, pruned=True), dense, atol=1e-6)
    True
    """
    expand, kernel = _check(f1, mask, pointwise_weight, depthwise_weight)
    repeated = repeat_channels(f1, expand, repeat_order)
    if not pruned:
        convolved = F.conv2d(F.conv2d(f1, pointwise_weight, pointwise_bias), depthwise_weight, depthwise_bias,
                             padding=kernel // 2, groups=depthwise_weight.shape[0])  # fmt: skip
        return convolved * mask + repeated * (1 - mask)

    batch, _, height, width = f1.shape
    blurred = (mask > 0.5).to(f1.dtype)
    blurred_pixels = mask_to_pixel_index(blurred)
    if blurred_pixels.numel() == 0:
        return repeated
    # 1x1 on the pixels the depthwise taps of blurred pixels read: the mask dilated by k // 2
    needed_pixels = mask_to_pixel_index(F.max_pool2d(blurred, kernel, stride=1, padding=kernel // 2))
    pointwise = F.linear(gather_pixels(f1, needed_pixels), pointwise_weight.flatten(1), pointwise_bias)
    # table of 1x1 outputs plus one zero row that stands for the zero padding outside the image
    table = torch.cat((pointwise, pointwise.new_zeros(1, pointwise.shape[1])))
    zero_row = needed_pixels.numel()
    row_of_pixel = torch.full((batch * height * width,), zero_row, dtype=torch.long, device=f1.device)
    row_of_pixel[needed_pixels] = torch.arange(zero_row, device=f1.device)
    # neighbour (dy, dx) of every blurred pixel, taps in raster order as in the conv weight
    steps = torch.arange(-(kernel // 2), kernel // 2 + 1, device=f1.device)
    hw = height * width
    y = (blurred_pixels % hw // width)[:, None] + steps.repeat_interleave(kernel)
    x = (blurred_pixels % width)[:, None] + steps.repeat(kernel)
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    neighbour = (blurred_pixels // hw * hw)[:, None] + y.clamp(0, height - 1) * width + x.clamp(0, width - 1)
    rows = torch.where(inside, row_of_pixel[neighbour], zero_row)  # (Q, k * k)
    if zero_row < 2**31:
        rows = rows.int()  # int32 rows gather faster
    out = _apply_rows([table], rows[None, :, :, None], None, depthwise_weight.to(table.dtype))
    if depthwise_bias is not None:
        out = out + depthwise_bias
    return _scatter_pixels_(repeated, blurred_pixels, out)


def mask_aware_conv_macs(
    mask: Tensor, channels: int, *, expand: int = 2, kernel_size: int = 3, pruned: bool = True
) -> int:
    """Multiply-accumulates of :func:`mask_aware_conv` for this mask (B, 1, H, W).

    Dense: every pixel pays C * E*C (1x1) + k*k * E*C (depthwise). Pruned: the 1x1 only on the mask
    dilated by k // 2 and the depthwise only on blurred pixels. Biases and the blend with Rep(f1) are
    not counted (elementwise, as the papers' profilers do).

    >>> mask = torch.zeros(1, 1, 10, 10); mask[0, 0, 4, 4] = 1
    >>> mask_aware_conv_macs(mask, 4, pruned=False), mask_aware_conv_macs(mask, 4)
    (10400, 360)
    """
    expanded = expand * channels
    if not pruned:
        return mask.numel() * (channels * expanded + kernel_size * kernel_size * expanded)
    blurred = (mask > 0.5).to(torch.float32)
    dilated = F.max_pool2d(blurred, kernel_size, stride=1, padding=kernel_size // 2)
    return int(dilated.sum()) * channels * expanded + int(blurred.sum()) * kernel_size * kernel_size * expanded


class MaskAwareConv(nn.Module):
    """The mask-aware first convolution of the M2AS block (Eq. 5): ``forward(f1, mask, pruned=False)``.

    Holds ``pointwise`` (1x1, C -> E*C) and ``depthwise`` (k x k, groups E*C), both with bias, as
    NAFNet's ``conv1`` and ``conv2``.

    >>> layer = MaskAwareConv(4)
    >>> f1, mask = torch.rand(2, 4, 6, 6), (torch.rand(2, 1, 6, 6) > 0.7).float()
    >>> torch.allclose(layer(f1, mask, pruned=True), layer(f1, mask), atol=1e-5)
    True
    """

    def __init__(self, channels: int, expand: int = 2, *, kernel_size: int = 3, repeat_order: str = "tile") -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        repeat_channels(torch.zeros(1, 1, 1, 1), expand, repeat_order)  # validates repeat_order
        self.repeat_order = repeat_order
        self.pointwise = nn.Conv2d(channels, expand * channels, 1)
        self.depthwise = nn.Conv2d(
            expand * channels, expand * channels, kernel_size, padding=kernel_size // 2, groups=expand * channels
        )

    def forward(self, f1: Tensor, mask: Tensor, pruned: bool = False) -> Tensor:
        return mask_aware_conv(
            f1, mask, self.pointwise.weight, self.pointwise.bias, self.depthwise.weight, self.depthwise.bias,
            pruned=pruned, repeat_order=self.repeat_order,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"repeat_order={self.repeat_order!r}"
