"""SAPHNet's pixel-dependent filtering module, PDF (CVPR 2020, Sec. 3.2, Eq. 11).

``y[j] = sum_k V[j, k] * W[k] x[j + p_k + Delta_k]``: a K x K convolution (weight W, Cout x Cin x K x K,
zero padding K // 2) whose K*K taps each carry a pixel-dependent scalar V[j, k] and a pixel-dependent
offset Delta_k, both shared by all channels. That is a modulated deformable convolution (DCNv2) with
one offset group and V as the modulation mask: :func:`pixel_dependent_filter` runs it on
:func:`adeblur.ops.deform_conv2d`. Without offsets (``offsets=None``: SAPHNet (a)) the taps sit on the
pixel grid and it runs as im2col instead: ``F.unfold`` columns scaled by V per tap, then one matrix
product with W (no bilinear sampling), in chunks of rows.

:class:`PixelDependentFilter` predicts V and the offsets from x with a "meta-layer" (one 3x3 conv,
``meta_kernel_size``, Cin -> K*K + 2*K*K channels). Choices (the papers give neither):

* ``V = 2 * sigmoid(raw)`` in (0, 2), and offsets ``= max_displacement * tanh(raw)``, bounded by
  Delta_max = ``max_displacement`` = 3 pixels (of the feature map) *per coordinate* by default: a
  tap's displacement (dx, dy) lies in a square, so its length can reach ``sqrt(2) * max_displacement``.
* The meta-layer starts at zero, so at initialisation V = 1 and the offsets are 0: the module *is*
  a normal convolution (the paper's special case) with ``nn.Conv2d``'s initialisation, and learns to
  deviate from it.
* Switches (Table 3): ``adaptive_kernel=False`` fixes V = 1, ``learn_offsets=False`` fixes the offsets
  at 0 (SAPHNet (a), run by the im2col path); with both off the module is a plain conv (and runs as
  ``F.conv2d``).

Offsets use deform_conv2d's layout: (B, 2*K*K, H, W), (dy, dx) per tap, taps in raster order.
:func:`dominant_offset_direction` summarises them as an (x, y) vector field, and
:func:`direction_to_degrees` turns that into angles, for the "offsets' direction" maps (Fig. 7) and
the PDF direction check (Sec. 4.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.ops.deform_conv import DEFAULT_CHUNK_BYTES, deform_conv2d, deform_conv2d_macs

__all__ = [
    "PixelDependentFilter",
    "direction_to_degrees",
    "dominant_offset_direction",
    "pixel_dependent_filter",
    "pixel_dependent_filter_macs",
]

DIRECTION_MODES = ("mean", "axis")
# Intermediates per chunk of the im2col path: cache-sized blocks of rows ran 1.5-2x faster than one
# 64 MiB block (128 channels, 64x64, one thread).
_CACHE_BYTES = 4 * 2**20


def check_filter_geometry(kernel_size: int, max_displacement: float) -> None:
    """Refuse a PDF's taps that have no centre (``kernel_size`` even or < 1) or a displacement bound <= 0."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if not max_displacement > 0:
        raise ValueError(f"max_displacement must be positive, got {max_displacement}")


def pixel_dependent_filter(
    x: Tensor,
    kernel_weights: Tensor,
    offsets: Tensor | None,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    """Eq. 11: a K x K conv with per-pixel tap scalars V and tap offsets shared over the channels.

    Args:
        x: (B, Cin, H, W).
        kernel_weights: (B, K*K, H, W), V: tap k of output pixel j is scaled by ``V[:, k, j]``.
        offsets: (B, 2*K*K, H, W), (dy, dx) in pixels per tap (deform_conv2d's layout), run on
            :func:`adeblur.ops.deform_conv2d`; or ``None``: no offsets (SAPHNet (a)), run as im2col
            (``F.unfold`` columns times V per tap, one matrix product with W; same result, no bilinear
            sampling).
        weight: (Cout, Cin, K, K), the ordinary conv weight W (K odd).
        bias: optional (Cout,).
        max_chunk_bytes: bound on the per-chunk intermediates of either path (for ``offsets=None``
            the unfolded columns and their V-scaled copy, 2 * B * Cin * K*K values per pixel, taken
            a block of rows at a time, at most 4 MiB, at least one row).

    Returns:
        (B, Cout, H, W) (zero padding K // 2, stride 1); channels_last-strided from the deformable path.

    V = 1 and zero offsets give the ordinary convolution:

    >>> x, w = torch.rand(1, 3, 6, 6), torch.rand(4, 3, 5, 5)
    >>> y = pixel_dependent_filter(x, torch.ones(1, 25, 6, 6), torch.zeros(1, 50, 6, 6), w)
    >>> torch.allclose(y, F.conv2d(x, w, padding=2), atol=1e-5)
    True
    >>> torch.allclose(pixel_dependent_filter(x, torch.ones(1, 25, 6, 6), None, w), y, atol=1e-5)
    True
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if (
        weight.dim() != 4
        or weight.shape[1] != x.shape[1]
        or weight.shape[2] != weight.shape[3]
        or weight.shape[2] % 2 == 0
    ):
        raise ValueError(f"weight must be (Cout, Cin={x.shape[1]}, K, K) with K odd, got shape {tuple(weight.shape)}")
    kernel_size = weight.shape[2]
    taps = kernel_size * kernel_size
    batch, _, height, width = x.shape
    if kernel_weights.shape != (batch, taps, height, width):
        raise ValueError(
            f"kernel_weights must be (B, K*K, H, W) = {(batch, taps, height, width)}, got {tuple(kernel_weights.shape)}"
        )
    if offsets is None:
        return _grid_filter(x, kernel_weights, weight, bias, max_chunk_bytes)
    if offsets.shape != (batch, 2 * taps, height, width):
        raise ValueError(
            f"offsets must be (B, 2*K*K, H, W) = {(batch, 2 * taps, height, width)}, got {tuple(offsets.shape)}"
        )
    # one offset group: V and the offsets are shared by all channels
    return deform_conv2d(
        x, offsets, weight, bias, mask=kernel_weights, padding=kernel_size // 2, max_chunk_bytes=max_chunk_bytes
    )


def _grid_filter(
    x: Tensor, kernel_weights: Tensor, weight: Tensor, bias: Tensor | None, max_chunk_bytes: int
) -> Tensor:
    """Eq. 11 without offsets: im2col columns (B, Cin*K*K, n*W) of a block of n rows, tap k of every
    channel scaled by V[:, k], times W as a (Cout, Cin*K*K) matrix."""
    batch, channels, height, width = x.shape
    out_channels, _, size, _ = weight.shape
    taps, half = size * size, size // 2
    padded = F.pad(x, (half, half, half, half))
    matrix = weight.to(x.dtype).reshape(out_channels, channels * taps)  # unfold's order: channel-major, taps inside
    row_bytes = 2 * batch * channels * taps * width * x.element_size()  # columns and their V-scaled copy
    rows = max(1, min(max_chunk_bytes, _CACHE_BYTES) // row_bytes)
    pieces = []
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        columns = F.unfold(padded[:, :, top : bottom + 2 * half], size).view(batch, channels, taps, -1)
        modulation = kernel_weights[:, :, top:bottom].reshape(batch, 1, taps, -1)
        pieces.append(torch.matmul(matrix, (columns * modulation).view(batch, channels * taps, -1)))
    y = (pieces[0] if len(pieces) == 1 else torch.cat(pieces, 2)).view(batch, out_channels, height, width)
    return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1)


def pixel_dependent_filter_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    num_pixels: int,
    *,
    meta_kernel_size: int = 3,
    adaptive_kernel: bool = True,
    learn_offsets: bool = True,
) -> int:
    """Multiply-accumulates of one :class:`PixelDependentFilter` call on ``num_pixels`` = B * H * W.

    The meta-layer conv (``num_pixels * meta_out * Cin * meta_kernel_size^2``, meta_out = K*K for V
    plus 2*K*K for the offsets) plus, with learned offsets, :func:`adeblur.ops.deform_conv2d_macs`
    (the conv and 4 MACs per bilinearly sampled value); without offsets (the im2col path) the conv
    and the modulation, ``num_pixels * K*K * Cin * (Cout + 1)``; with both switches off, a plain conv.

    >>> pixel_dependent_filter_macs(8, 8, 5, 100, adaptive_kernel=False, learn_offsets=False)  # 100 * 8 * 8 * 25
    160000
    """
    taps = kernel_size * kernel_size
    meta_out = taps * (int(adaptive_kernel) + 2 * int(learn_offsets))
    if meta_out == 0:
        return num_pixels * out_channels * in_channels * taps
    meta = num_pixels * meta_out * in_channels * meta_kernel_size * meta_kernel_size
    if not learn_offsets:
        return meta + num_pixels * taps * in_channels * (out_channels + 1)
    return meta + deform_conv2d_macs(in_channels, out_channels, kernel_size, num_pixels)


class PixelDependentFilter(nn.Module):
    """The PDF module: a conv whose taps get per-pixel scalars V and offsets from a meta-layer.

    Args:
        in_channels, out_channels: Cin and Cout (default Cin).
        kernel_size: K, odd (5 in the paper).
        max_displacement: Delta_max, the bound on each offset coordinate, in pixels (3); bounded per
            coordinate (tanh), so a displacement's length can reach ``sqrt(2) * max_displacement``.
        learn_offsets: predict offsets (False: offsets 0, SAPHNet (a) / Table 3's "offset" switch).
        adaptive_kernel: predict V (False: V = 1, Table 3's "kernel" switch).
        meta_kernel_size: kernel of the meta-layer conv (3).
        bias: whether the conv has a bias (like ``nn.Conv2d``).

    Parameters: ``weight`` (Cout, Cin, K, K) and ``bias`` as in ``nn.Conv2d`` (same initialisation);
    ``meta`` (the meta-layer, zero-initialised; absent with both switches off).

    ``forward(x, *, return_offsets=False)`` -> y (B, Cout, H, W), or ``(y, offsets)`` with offsets
    (B, 2*K*K, H, W) in deform_conv2d's (dy, dx) layout (zeros without ``learn_offsets``). Sets
    ``macs_of_last_call`` (see :func:`pixel_dependent_filter_macs`).

    >>> pdf = PixelDependentFilter(8, kernel_size=5)
    >>> x = torch.rand(1, 8, 6, 6)
    >>> torch.allclose(pdf(x), F.conv2d(x, pdf.weight, pdf.bias, padding=2), atol=1e-5)  # at init
    True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int = 5,
        *,
        max_displacement: float = 3.0,
        learn_offsets: bool = True,
        adaptive_kernel: bool = True,
        meta_kernel_size: int = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_filter_geometry(kernel_size, max_displacement)
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.max_displacement = float(max_displacement)
        self.learn_offsets, self.adaptive_kernel = learn_offsets, adaptive_kernel
        self.meta_kernel_size = meta_kernel_size
        template = nn.Conv2d(in_channels, out_channels, kernel_size, bias=bias)  # nn.Conv2d's initialisation
        self.weight, self.bias = template.weight, template.bias
        taps = kernel_size * kernel_size
        meta_out = taps * (int(adaptive_kernel) + 2 * int(learn_offsets))
        self.meta: nn.Conv2d | None = None
        if meta_out:
            self.meta = nn.Conv2d(in_channels, meta_out, meta_kernel_size, padding=meta_kernel_size // 2)
            nn.init.zeros_(self.meta.weight)  # V = 1 and offsets 0: a normal conv at initialisation
            nn.init.zeros_(self.meta.bias)

    def forward(self, x: Tensor, *, return_offsets: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        batch, _, height, width = x.shape
        taps = self.kernel_size * self.kernel_size
        self.macs_of_last_call = pixel_dependent_filter_macs(
            self.in_channels, self.out_channels, self.kernel_size, batch * height * width,
            meta_kernel_size=self.meta_kernel_size, adaptive_kernel=self.adaptive_kernel,
            learn_offsets=self.learn_offsets,
        )  # fmt: skip
        offsets = None
        if self.meta is None:
            y = F.conv2d(x, self.weight, self.bias, padding=self.kernel_size // 2)
        else:
            raw = self.meta(x)
            if self.adaptive_kernel:
                kernel_weights = 2 * torch.sigmoid(raw[:, :taps])  # V in (0, 2), 1 at raw = 0
                raw = raw[:, taps:]
            else:
                kernel_weights = x.new_ones(batch, taps, height, width)
            if self.learn_offsets:  # |dy|, |dx| < Delta_max: lengths up to sqrt(2) * Delta_max
                offsets = self.max_displacement * torch.tanh(raw)
            y = pixel_dependent_filter(x, kernel_weights, offsets, self.weight, self.bias)  # None: im2col
        if not return_offsets:
            return y
        if offsets is None:
            offsets = x.new_zeros(batch, 2 * taps, height, width)
        return y, offsets

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"max_displacement={self.max_displacement}, learn_offsets={self.learn_offsets}, "
            f"adaptive_kernel={self.adaptive_kernel}"
        )


def dominant_offset_direction(offsets: Tensor, *, mode: str = "mean") -> Tensor:
    """Per-pixel summary of a PDF's tap offsets as an (x, y) vector field (pixels; x right, y down).

    Args:
        offsets: (B, 2*K*K, H, W) in deform_conv2d's (dy, dx) layout.
        mode: ``"mean"``: the mean (dx, dy) over the K*K taps, a signed direction (where the filter's
            footprint moves). ``"axis"``: the principal axis of the offsets, the direction along which
            they spread the footprint (a line blur has no sign): the eigenvector of the largest
            eigenvalue l1 of the second moments ``mean_k (dx, dy)^T (dx, dy)``, scaled to length
            ``sqrt(l1 - l2)`` (0 for an isotropic spread), with its sign chosen so that it points
            into the upper half plane as seen on screen (``y <= 0``; ``y < 0`` or ``x > 0``).

    Returns:
        (B, 2, H, W), channel 0 = x (rightwards), channel 1 = y (downwards), the project's convention
        for displacement fields. :func:`direction_to_degrees` gives angles.

    >>> offsets = torch.zeros(1, 2, 1, 1); offsets[0, 0] = -1.0; offsets[0, 1] = 1.0  # K = 1: dy = -1, dx = 1
    >>> dominant_offset_direction(offsets).flatten().tolist()  # up and to the right
    [1.0, -1.0]
    """
    if mode not in DIRECTION_MODES:
        raise ValueError(f"mode must be one of {DIRECTION_MODES}, got {mode!r}")
    if offsets.dim() != 4 or offsets.shape[1] % 2 or offsets.shape[1] == 0:
        raise ValueError(f"offsets must be (B, 2*K*K, H, W), got shape {tuple(offsets.shape)}")
    batch, channels, height, width = offsets.shape
    pairs = offsets.view(batch, channels // 2, 2, height, width)
    dy, dx = pairs[:, :, 0], pairs[:, :, 1]  # (B, K*K, H, W)
    if mode == "mean":
        return torch.stack((dx.mean(1), dy.mean(1)), 1)
    sxx, syy, sxy = (dx * dx).mean(1), (dy * dy).mean(1), (dx * dy).mean(1)
    # principal axis of [[sxx, sxy], [sxy, syy]]: angle phi = atan2(2 sxy, sxx - syy) / 2
    # (y down), eigenvalue gap l1 - l2 = sqrt((sxx - syy)^2 + 4 sxy^2)
    gap = torch.sqrt((sxx - syy) ** 2 + 4 * sxy**2)
    phi = 0.5 * torch.atan2(2 * sxy, sxx - syy)  # in (-pi/2, pi/2]
    length = gap.sqrt()
    axis_x, axis_y = length * torch.cos(phi), length * torch.sin(phi)
    flip = (axis_y > 0) | ((axis_y == 0) & (axis_x < 0))  # point into the upper half plane (y up on screen)
    sign = 1 - 2 * flip.to(offsets.dtype)
    return torch.stack((sign * axis_x, sign * axis_y), 1)


def direction_to_degrees(direction: Tensor, *, axial: bool = False) -> Tensor:
    """Angles of an (x right, y down) vector field as seen on screen: counter-clockwise from rightwards.

    0 deg = rightwards, 90 deg = upwards on screen (y = -1), 180 deg = leftwards, -90 deg = downwards
    (the angle of the usual mathematical convention with the image's y axis flipped to point up, as a
    linear PSF's angle is usually stated). ``axial=True`` folds angles into [0, 180) (a direction and
    its opposite are the same axis, as for a line blur).

    Args:
        direction: (B, 2, H, W), channel 0 = x, channel 1 = y (e.g. :func:`dominant_offset_direction`).
        axial: fold into [0, 180) instead of (-180, 180].

    Returns:
        (B, 1, H, W) degrees.

    >>> direction = torch.tensor([1.0, 0.0, 1.0, -1.0, 0.0, -1.0, -1.0, 1.0]).view(4, 2, 1, 1)
    >>> direction_to_degrees(direction).flatten().tolist()
    [0.0, 45.0, 90.0, -135.0]
    >>> direction_to_degrees(direction, axial=True).flatten().tolist()
    [0.0, 45.0, 90.0, 45.0]
    """
    if direction.dim() != 4 or direction.shape[1] != 2:
        raise ValueError(f"direction must be (B, 2, H, W), got shape {tuple(direction.shape)}")
    # 0.0 - y: +0 for y = +-0, so that rightwards is 0 (not -0) and leftwards 180 (not -180)
    degrees = torch.rad2deg(torch.atan2(0.0 - direction[:, 1:2], direction[:, 0:1]))
    return torch.remainder(degrees, 180.0) if axial else degrees
