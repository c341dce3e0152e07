"""Image-quality metrics: PSNR, SSIM and their blur-mask-weighted variants (ReLoBlur protocol).

All functions take ``prediction`` and ``target`` as ``(C, H, W)`` or ``(B, C, H, W)`` floating-point
tensors on any device and score every image of a batch separately (``reduction="none"`` gives the
``(B,)`` per-image values, ``"mean"`` their average; an unbatched input gives a 0-dim tensor either way).

Conventions (exact formulas in ``docs/metrics.md``):

* SSIM follows Wang et al. 2004: an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``,
  population (co)variances, and the mean of the SSIM map over the pixels whose window lies inside the
  image (a 5-pixel border is dropped), averaged over channels. This equals scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
* Weighted PSNR / SSIM follow the ReLoBlur/LBAG evaluation code (Li et al. 2023): the mask is binarised
  (``mask > 0``), the squared error is averaged over the masked pixels and all channels, and the SSIM map
  is averaged over the masked pixels of the same 5-pixel-cropped interior.
* ``y_channel=True`` scores the BT.601 luma of MATLAB's ``rgb2ycbcr`` (16..235 scaled to ``[0, 1]``), and
  ``crop_border`` drops that many pixels on every side first, both as BasicSR does.

Nothing is clamped or quantised here: clamp to ``[0, 1]`` (and round to 8 bits if that is the protocol)
before scoring.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.errors import MetricError

__all__ = [
    "PSNR",
    "SSIM",
    "psnr",
    "rgb_to_y",
    "ssim",
    "ssim_map",
    "weighted_psnr",
    "weighted_ssim",
]

Reduction = Literal["mean", "none"]

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_SSIM_RADIUS = SSIM_WINDOW_SIZE // 2

# ITU-R BT.601 luma with studio swing, as MATLAB's rgb2ycbcr: Y' = 16 + 65.481 R + 128.553 G + 24.966 B
# for R, G, B in [0, 1] and Y' in [16, 235]; divided by 255 to bring it back to [0, 1].
_LUMA_WEIGHTS = (65.481, 128.553, 24.966)
_LUMA_OFFSET = 16.0


@functools.lru_cache(maxsize=None)
def _gaussian_window_1d(device: torch.device, dtype: torch.dtype) -> Tensor:
    """The normalised 1-D Gaussian (11 taps, sigma 1.5); the 2-D window of Wang et al. is its outer product."""
    # A tensor made under torch.inference_mode() could not be saved for a later backward pass.
    with torch.inference_mode(False):
        offsets = torch.arange(SSIM_WINDOW_SIZE, dtype=torch.float64) - _SSIM_RADIUS
        window = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
        return (window / window.sum()).to(device=device, dtype=dtype)


def _as_batch(prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Check a prediction/target pair; return both as ``(B, C, H, W)`` in a common dtype, and ``batched``."""
    for name, image in (("prediction", prediction), ("target", target)):
        if not isinstance(image, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
        if not image.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {image.dtype}")
        if image.ndim not in (3, 4):
            raise MetricError(f"{name} must be (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
    if prediction.shape != target.shape:
        raise MetricError(
            f"prediction shape {tuple(prediction.shape)} does not match target shape {tuple(target.shape)}"
        )
    dtype = torch.promote_types(prediction.dtype, target.dtype)
    batched = prediction.ndim == 4
    if not batched:
        prediction, target = prediction.unsqueeze(0), target.unsqueeze(0)
    return prediction.to(dtype), target.to(dtype), batched


def _as_batch_mask(mask: Tensor, images: Tensor) -> Tensor:
    """Check a blur mask against ``(B, C, H, W)`` images; return it binarised (``mask > 0``) as ``(B, 1, H, W)``.

    Accepted shapes: ``(B, 1, H, W)``, or ``(1, H, W)`` / ``(1, 1, H, W)`` for one mask shared by the batch.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    batch, _, height, width = images.shape
    mask_4d = mask.unsqueeze(0) if mask.ndim == 3 else mask
    if mask_4d.ndim != 4 or mask_4d.shape[0] not in (1, batch) or mask_4d.shape[1:] != (1, height, width):
        raise MetricError(
            f"mask shape {tuple(mask.shape)} does not match images {tuple(images.shape)}: "
            f"expected ({batch}, 1, {height}, {width}) or (1, {height}, {width})"
        )
    return (mask_4d > 0).to(device=images.device, dtype=images.dtype).expand(batch, 1, height, width)


def _crop(images: Tensor, border: int) -> Tensor:
    return images[..., border : images.shape[-2] - border, border : images.shape[-1] - border]


def _check_nonempty(mask_sums: Tensor, where: str) -> None:
    empty = (mask_sums == 0).nonzero().flatten().tolist()
    if empty:
        raise MetricError(f"blur mask of image(s) {empty} is empty {where}; weighted metrics need masked pixels")


def rgb_to_y(images: Tensor, data_range: float = 1.0) -> Tensor:
    """BT.601 luma as MATLAB ``rgb2ycbcr`` / BasicSR ``test_y_channel``: ``(..., 3, H, W) -> (..., 1, H, W)``.

    ``Y = (16 * data_range + 65.481 R + 128.553 G + 24.966 B) / 255``, so ``[0, 1]`` RGB maps to
    ``[16/255, 235/255]`` (no rounding).

    >>> rgb_to_y(torch.ones(3, 2, 2))[0, 0, 0].item() * 255
    235.0...
    """
    if images.ndim < 3 or images.shape[-3] != 3:
        raise MetricError(f"y_channel needs RGB images with 3 channels, got shape {tuple(images.shape)}")
    weights = images.new_tensor(_LUMA_WEIGHTS).view(3, 1, 1)
    return ((images * weights).sum(dim=-3, keepdim=True) + _LUMA_OFFSET * data_range) / 255.0


def _prepare(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor | None,
    data_range: float,
    crop_border: int,
    y_channel: bool,
) -> tuple[Tensor, Tensor, Tensor | None, bool]:
    """Shared front end of psnr/ssim: shape checks, mask check, border crop, luma conversion."""
    prediction, target, batched = _as_batch(prediction, target)
    if mask is not None:
        mask = _as_batch_mask(mask, prediction)
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise MetricError(f"crop_border must be a non-negative integer, got {crop_border!r}")
    height, width = prediction.shape[-2:]
    if 2 * crop_border >= min(height, width):
        raise MetricError(f"crop_border={crop_border} leaves nothing of {height}x{width} images")
    if crop_border:
        prediction, target = _crop(prediction, crop_border), _crop(target, crop_border)
        mask = None if mask is None else _crop(mask, crop_border)
    if y_channel:
        prediction, target = rgb_to_y(prediction, data_range), rgb_to_y(target, data_range)
    if mask is not None:
        where = f"after crop_border={crop_border}" if crop_border else "(all zeros)"
        _check_nonempty(mask.sum(dim=(1, 2, 3)), where)
    return prediction, target, mask, batched


def _reduce(values: Tensor, batched: bool, reduction: Reduction) -> Tensor:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if not batched:
        return values[0]
    return values.mean() if reduction == "mean" else values


def psnr(
    prediction: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    mask: Tensor | None = None,
    crop_border: int = 0,
    y_channel: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Peak signal-to-noise ratio in dB, per image; weighted over a blur mask when ``mask`` is given.

    ``PSNR = 10 log10(data_range^2 / MSE)`` with MSE over all pixels and channels of an image, or, with a
    mask ``m`` (binarised ``m > 0``), ``MSE_w = sum_c sum_p m_p (x - y)^2 / (C sum_p m_p)`` as in the
    ReLoBlur/LBAG evaluation. Identical images give ``+inf``.

    Args:
        prediction, target: ``(C, H, W)`` or ``(B, C, H, W)`` float images in ``[0, data_range]``.
        data_range: peak value of the images.
        mask: blur mask ``(B, 1, H, W)`` or ``(1, H, W)``, 1 = blurred; turns this into the weighted PSNR.
        crop_border: pixels dropped on every side (images and mask) before scoring.
        y_channel: score the BT.601 luma of RGB images (see :func:`rgb_to_y`).
        reduction: ``"mean"`` of the per-image values, or ``"none"`` for the ``(B,)`` values.

    Returns:
        0-dim tensor, or ``(B,)`` for batched input with ``reduction="none"``.

    Raises:
        MetricError: shape mismatch, mask of the wrong shape, or an empty mask (names the images).

    >>> target = torch.full((1, 3, 4, 4), 0.5)
    >>> psnr(target + 0.1, target).item()
    20.0...
    >>> psnr(target, target).item()
    inf
    """
    prediction, target, mask, batched = _prepare(prediction, target, mask, data_range, crop_border, y_channel)
    squared_error = (prediction - target) ** 2
    if mask is None:
        mse = squared_error.mean(dim=(1, 2, 3))
    else:
        mse = (squared_error * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * squared_error.shape[1])
    # log10(0) = -inf, so identical images give +inf rather than an error or nan.
    values = 20 * math.log10(data_range) - 10 * torch.log10(mse)
    return _reduce(values, batched, reduction)


def _ssim_map_batch(prediction: Tensor, target: Tensor, data_range: float) -> Tensor:
    """SSIM map of ``(B, C, H, W)`` images over the valid window positions: ``(B, C, H - 10, W - 10)``."""
    height, width = prediction.shape[-2:]
    if min(height, width) < SSIM_WINDOW_SIZE:
        raise MetricError(
            f"SSIM needs images of at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE} pixels "
            f"(after crop_border), got {height}x{width}"
        )
    channels = prediction.shape[1]
    window = _gaussian_window_1d(prediction.device, prediction.dtype)
    # The five local moments of Wang et al. Eq. (14)-(16), filtered in one grouped, separable pass.
    moments = torch.cat([prediction, target, prediction * prediction, target * target, prediction * target], 1)
    groups = moments.shape[1]
    moments = F.conv2d(moments, window.view(1, 1, -1, 1).repeat(groups, 1, 1, 1), groups=groups)
    moments = F.conv2d(moments, window.view(1, 1, 1, -1).repeat(groups, 1, 1, 1), groups=groups)
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = moments.split(channels, dim=1)
    var_x = mean_xx - mean_x**2
    var_y = mean_yy - mean_y**2
    cov_xy = mean_xy - mean_x * mean_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    # Wang et al. Eq. (13).
    return ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))


def ssim_map(prediction: Tensor, target: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Local SSIM (Wang et al. 2004, Eq. 13) at every position where the 11x11 window fits in the image.

    The map is *not* full-size: entry ``[..., i, j]`` belongs to image pixel ``(i + 5, j + 5)``, so a
    ``(B, C, H, W)`` input gives ``(B, C, H - 10, W - 10)`` (``(C, H - 10, W - 10)`` for ``(C, H, W)``).
    It equals scikit-image's full SSIM image with its 5-pixel border cropped off.

    >>> image = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    >>> ssim_map(image, image).shape
    torch.Size([2, 3, 6, 10])
    """
    prediction_4d, target_4d, batched = _as_batch(prediction, target)
    values = _ssim_map_batch(prediction_4d, target_4d, data_range)
    return values if batched else values[0]


def ssim(
    prediction: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    mask: Tensor | None = None,
    crop_border: int = 0,
    y_channel: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image, differentiable; weighted over a mask if given.

    The SSIM map of :func:`ssim_map` (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) is averaged over
    its positions and the channels (Wang et al. Eq. 17, RGB = mean over channels). With a mask ``m``
    (binarised ``m > 0``) cropped by the same 5 pixels so that it lines up with the map, the weighted SSIM is
    ``sum_c sum_p m_p S_c(p) / (C sum_p m_p)``, as in the ReLoBlur/LBAG evaluation.

    Args:
        prediction, target: ``(C, H, W)`` or ``(B, C, H, W)`` float images, at least 11x11 after cropping.
        data_range: peak value of the images (sets ``C1 = (K1 data_range)^2``, ``C2 = (K2 data_range)^2``).
        mask: blur mask ``(B, 1, H, W)`` or ``(1, H, W)``, 1 = blurred; turns this into the weighted SSIM.
        crop_border: pixels dropped on every side (images and mask) before scoring.
        y_channel: score the BT.601 luma of RGB images (see :func:`rgb_to_y`).
        reduction: ``"mean"`` of the per-image values, or ``"none"`` for the ``(B,)`` values.

    Returns:
        0-dim tensor, or ``(B,)`` for batched input with ``reduction="none"``.

    Raises:
        MetricError: shape mismatch, images smaller than 11x11, mask of the wrong shape, or a mask with
            no pixel in the 5-pixel-cropped interior.

    >>> image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> ssim(image, image).item()
    1.0
    >>> round(ssim(image, image * 0.5).item(), 3)
    0.641
    """
    prediction, target, mask, batched = _prepare(prediction, target, mask, data_range, crop_border, y_channel)
    similarity = _ssim_map_batch(prediction, target, data_range)
    if mask is None:
        values = similarity.mean(dim=(1, 2, 3))
    else:
        mask = _crop(mask, _SSIM_RADIUS)  # lines the mask up with the map's centre pixels
        mask_sums = mask.sum(dim=(1, 2, 3))
        _check_nonempty(mask_sums, f"outside the {_SSIM_RADIUS}-pixel border that SSIM skips")
        values = (similarity * mask).sum(dim=(1, 2, 3)) / (mask_sums * similarity.shape[1])
    return _reduce(values, batched, reduction)


def weighted_psnr(prediction: Tensor, target: Tensor, mask: Tensor, **kwargs: Any) -> Tensor:
    """PSNR over the blur mask (ReLoBlur ``PSNR_w``): :func:`psnr` with ``mask`` required.

    >>> target = torch.zeros(3, 4, 4)
    >>> prediction = target.clone()
    >>> prediction[:, :2] = 0.1  # error only in the top half
    >>> mask = torch.zeros(1, 4, 4)
    >>> mask[:, :2] = 1
    >>> weighted_psnr(prediction, target, mask).item()
    20.0...
    """
    return psnr(prediction, target, mask=mask, **kwargs)


def weighted_ssim(prediction: Tensor, target: Tensor, mask: Tensor, **kwargs: Any) -> Tensor:
    """SSIM over the blur mask (ReLoBlur ``SSIM_w``): :func:`ssim` with ``mask`` required.

    >>> image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> weighted_ssim(image, image, torch.ones(1, 16, 16)).item()
    1.0
    """
    return ssim(prediction, target, mask=mask, **kwargs)


class _ImageMetric(nn.Module):
    """Module form of a metric function ``metric(prediction, target, mask=..., **options)``."""

    metric: staticmethod

    def __init__(
        self,
        data_range: float = 1.0,
        crop_border: int = 0,
        y_channel: bool = False,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        self.data_range = data_range
        self.crop_border = crop_border
        self.y_channel = y_channel
        self.reduction = reduction

    def forward(self, prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.metric(
            prediction,
            target,
            data_range=self.data_range,
            mask=mask,
            crop_border=self.crop_border,
            y_channel=self.y_channel,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"data_range={self.data_range}, crop_border={self.crop_border}, "
            f"y_channel={self.y_channel}, reduction={self.reduction!r}"
        )


class PSNR(_ImageMetric):
    """Module form of :func:`psnr`; ``forward(prediction, target, mask=None)``.

    >>> PSNR(reduction="none")(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.1))
    tensor([20.0000, 20.0000])
    """

    metric = staticmethod(psnr)


class SSIM(_ImageMetric):
    """Module form of :func:`ssim`; ``forward(prediction, target, mask=None)``. The SSIM loss is ``1 - SSIM()(...)``.

    >>> image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> SSIM()(image, image).item()
    1.0
    """

    metric = staticmethod(ssim)
