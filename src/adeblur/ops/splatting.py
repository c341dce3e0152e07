"""Forward warping by bilinear splatting: average and softmax splatting (Niklaus and Liu, CVPR 2020).

Every source pixel p is pushed to p + flow(p) and shared among the 4 pixels around that point with
bilinear weights b. With importance Z (softmax splatting)::

    out(q) = sum_p exp(Z(p)) b(q, p + flow(p)) image(p) / sum_p exp(Z(p)) b(q, p + flow(p))

Average splatting is the same with Z = 0. Where nothing lands (zero total weight) the output keeps
the unwarped source value ``image(q)`` (M2AENet's reblur loss, Eq. 11, warps the sharp frame to N
instants; keeping the source there is the design's choice, see ``docs/ops.md``). ``exp(Z)`` is
computed as ``exp(Z - max Z)`` per image, which leaves the ratio unchanged and cannot overflow.
Differentiable w.r.t. image, flow and importance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ForwardWarp", "forward_warp", "forward_warp_macs"]


def forward_warp(image: Tensor, flow: Tensor, *, mode: str = "average", importance: Tensor | None = None) -> Tensor:
    """Forward-warp ``image`` by ``flow`` with bilinear splatting.

    Args:
        image: (B, C, H, W).
        flow: (B, 2, H, W) displacement of each source pixel in pixels, channel 0 = x (right),
            channel 1 = y (down).
        mode: ``"average"`` or ``"softmax"``.
        importance: (B, 1, H, W) importance Z of each source pixel; required for ``"softmax"``,
            not accepted for ``"average"``.

    Returns:
        (B, C, H, W) warped image (channels_last-strided), the source value where nothing lands.

    >>> image = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    >>> flow = torch.zeros(1, 2, 1, 4); flow[:, 0] = 1.0  # everything one pixel to the right
    >>> forward_warp(image, flow)  # the first pixel receives nothing and keeps its value
    tensor([[[[1., 1., 2., 3.]]]])
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
    batch, channels, height, width = image.shape
    if tuple(flow.shape) != (batch, 2, height, width):
        raise ValueError(f"flow must be (B, 2, H, W) = {(batch, 2, height, width)}, got {tuple(flow.shape)}")
    if not image.is_floating_point() or not flow.is_floating_point():
        raise TypeError(f"image and flow must be floating point, got {image.dtype} and {flow.dtype}")
    if mode not in ("average", "softmax"):
        raise ValueError(f"mode must be 'average' or 'softmax', got {mode!r}")
    if mode == "softmax":
        if importance is None or tuple(importance.shape) != (batch, 1, height, width):
            shape = None if importance is None else tuple(importance.shape)
            raise ValueError(f"softmax splatting needs importance of shape {(batch, 1, height, width)}, got {shape}")
        # exp(Z - max Z): same ratio, no overflow; the shift is a constant, so it is detached.
        source_weight = torch.exp(importance - importance.amax(dim=(1, 2, 3), keepdim=True).detach())
    elif importance is not None:
        raise ValueError("importance is only used by mode='softmax'")
    else:
        source_weight = torch.ones_like(image[:, :1])

    # Per source pixel: the top-left corner of its landing point (integer part of the flow kept
    # apart from the fraction for precision) and the 4 bilinear corner weights.
    grid_y = torch.arange(height, device=flow.device, dtype=flow.dtype).view(height, 1)
    grid_x = torch.arange(width, device=flow.device, dtype=flow.dtype)
    floor_x, floor_y = flow[:, 0].floor(), flow[:, 1].floor()
    frac_x, frac_y = flow[:, 0] - floor_x, flow[:, 1] - floor_y
    x0 = (floor_x + grid_x).clamp_(-2, width).long()
    y0 = (floor_y + grid_y).clamp_(-2, height).long()
    batch_row = (torch.arange(batch, device=flow.device) * (height * width)).view(batch, 1, 1)

    values = torch.cat((image * source_weight, source_weight.to(image.dtype)), 1)
    rows = values.permute(0, 2, 3, 1).reshape(-1, channels + 1)
    accumulated = rows.new_zeros(batch * height * width, channels + 1)
    for y, weight_y in ((y0, 1 - frac_y), (y0 + 1, frac_y)):
        for x, weight_x in ((x0, 1 - frac_x), (x0 + 1, frac_x)):
            inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
            target = batch_row + y.clamp(0, height - 1) * width + x.clamp(0, width - 1)
            corner_weight = (weight_y * weight_x * inside).reshape(-1, 1).to(rows.dtype)
            accumulated.index_add_(0, target.reshape(-1), rows * corner_weight)
    numerator, total_weight = accumulated[:, :channels], accumulated[:, channels:]
    landed = total_weight > 0
    source = image.permute(0, 2, 3, 1).reshape(-1, channels)
    # double where: no 0/0 in the forward pass, no NaN gradient through the unused branch
    warped = torch.where(landed, numerator / torch.where(landed, total_weight, torch.ones_like(total_weight)), source)
    return warped.view(batch, height, width, channels).permute(0, 3, 1, 2)


def forward_warp_macs(batch: int, channels: int, height: int, width: int, *, mode: str = "average") -> int:
    """Multiply-accumulates of :func:`forward_warp`.

    Counted: 4 MACs per splatted value (one per bilinear corner) for the C channels and the weight
    channel, 1 per output value for the normalising division, and for softmax splatting 1 per value
    for ``image * exp(Z)``. Not counted: exp, comparisons, the per-pixel corner arithmetic.

    >>> forward_warp_macs(1, 3, 10, 10)
    1900
    """
    if mode not in ("average", "softmax"):
        raise ValueError(f"mode must be 'average' or 'softmax', got {mode!r}")
    per_pixel = 4 * (channels + 1) + channels + (channels if mode == "softmax" else 0)
    return batch * height * width * per_pixel


class ForwardWarp(nn.Module):
    """Module wrapper of :func:`forward_warp`: ``forward(image, flow, importance=None)``.

    >>> ForwardWarp()(torch.rand(2, 3, 4, 5), torch.zeros(2, 2, 4, 5)).shape
    torch.Size([2, 3, 4, 5])
    """

    def __init__(self, mode: str = "average") -> None:
        super().__init__()
        if mode not in ("average", "softmax"):
            raise ValueError(f"mode must be 'average' or 'softmax', got {mode!r}")
        self.mode = mode

    def forward(self, image: Tensor, flow: Tensor, importance: Tensor | None = None) -> Tensor:
        return forward_warp(image, flow, mode=self.mode, importance=importance)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
