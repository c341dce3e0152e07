"""Training losses of M2AENet (Eq. 7-11), usable for any restorer through :func:`reconstruction_loss`.

``L = L_recon + 0.01 L_mask + L_offset`` (Eq. 7):

* :func:`reconstruction_loss` (Eq. 8): ``L1 + (1 - SSIM) + 0.1 FFT``, the FFT term the mean absolute
  difference of the real and imaginary parts of the unnormalised ``rfft2`` (MIMO-UNet / LBAG).
* :func:`mask_loss` (Eq. 9): binary cross-entropy of the predicted blur probability at every guided
  scale against the ground-truth mask resized to that scale (area average, then ``>= 0.5``), summed
  over the scales; an all-ones mask for samples without one (GoPro).
* :func:`reblur_loss` (Eq. 10-11): per scale, the MSE between the **mean** of the N2 = 9 sharp frames
  forward-warped (average splatting) to the trajectory instants and the blurred input, both resized
  to the scale (area average), plus ``alpha * sum_n TV(o(t_n))``, summed over the scales.
* :class:`M2AENetLoss` combines them from the model's ``aux`` output and the batch dict.

Constants the paper does not give, and readings (details in ``docs/m2aenet.md``): the FFT form (above);
the mean, not the sum, of the warped frames in Eq. 11 (a blurred frame is the average of the sharp
frames of the exposure); TV = mean absolute difference of horizontally and vertically adjacent
displacements, in pixels of the scale, averaged over both coordinates; ``alpha = 5e-4``
(:data:`DEFAULT_TV_WEIGHT`); masks and images resized by area averaging after the same zero padding
the model applies; per-term reductions are means over all elements.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.metrics import ssim
from adeblur.models.m2aenet import TRAJECTORIES, downsample_mask
from adeblur.ops import forward_warp

__all__ = [
    "DEFAULT_TV_WEIGHT",
    "M2AENetLoss",
    "ReconstructionLoss",
    "blur_mask_or_ones",
    "fft_loss",
    "mask_loss",
    "reblur_loss",
    "reconstruction_loss",
    "total_variation",
]

#: alpha of Eq. 10 (not given in the paper): weight of the TV of each of the N2 displacement maps.
DEFAULT_TV_WEIGHT = 5e-4
#: N2 of Eq. 10-11: instants at which the sharp frame is warped (Table 6).
DEFAULT_REBLUR_INSTANTS = 9


def _check_pair(prediction: Tensor, target: Tensor) -> None:
    if prediction.ndim != 4 or prediction.shape != target.shape:
        raise ValueError(
            f"expected two (B, C, H, W) batches of the same shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )


def fft_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Frequency loss of MIMO-UNet / LBAG: mean |Re - Re'| and |Im - Im'| of the unnormalised ``rfft2``.

    Args:
        prediction, target: (B, C, H, W).

    Returns:
        0-dim tensor: the L1 distance averaged over the real and imaginary parts of all
        B * C * H * (W // 2 + 1) coefficients.

    >>> x = torch.zeros(1, 1, 2, 2); y = x.clone(); y[0, 0, 0, 0] = 1.0  # an impulse: all coefficients 1
    >>> fft_loss(x, y).item()  # |Re| = 1, |Im| = 0 on each of the 2 x 2 coefficients
    0.5
    """
    _check_pair(prediction, target)
    difference = torch.view_as_real(torch.fft.rfft2(prediction) - torch.fft.rfft2(target))
    return difference.abs().mean()


def reconstruction_loss(prediction: Tensor, target: Tensor, *, fft_weight: float = 0.1) -> Tensor:
    """Eq. 8: ``L1 + (1 - SSIM) + fft_weight * FFT`` between a restored batch and the sharp batch.

    L1 is the mean absolute error; SSIM is :func:`adeblur.metrics.ssim` (Gaussian window 11, sigma
    1.5, mean over the valid window positions), so images need at least 11x11 pixels.

    >>> x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> reconstruction_loss(x, x).item()
    0.0
    """
    _check_pair(prediction, target)
    l1 = (prediction - target).abs().mean()
    return l1 + (1 - ssim(prediction, target)) + fft_weight * fft_loss(prediction, target)


def blur_mask_or_ones(sample: Mapping[str, Any]) -> Tensor:
    """The sample's ``mask``, or an all-ones mask shaped like its ``blur`` image (GoPro: all blurred).

    Works on one sample ((C, H, W) -> (1, H, W)) or a batch ((B, C, H, W) -> (B, 1, H, W)).

    >>> blur_mask_or_ones({"blur": torch.zeros(3, 4, 5)}).shape
    torch.Size([1, 4, 5])
    """
    mask = sample.get("mask")
    if mask is not None:
        return mask
    blur = sample["blur"]
    return torch.ones_like(blur[..., :1, :, :])


def _resize_like_model(images: Tensor, size: tuple[int, int], scale: int) -> Tensor:
    """Zero-pad (B, C, H, W) to ``size * scale`` as the model pads its input, then area-average to ``size``."""
    padded_height, padded_width = size[0] * scale, size[1] * scale
    height, width = images.shape[-2:]
    if height > padded_height or width > padded_width:
        raise ValueError(
            f"images of size {(height, width)} do not fit a scale-{scale} map of size {size} "
            f"(covers {(padded_height, padded_width)})"
        )
    images = F.pad(images, (0, padded_width - width, 0, padded_height - height))
    return images if scale == 1 else F.avg_pool2d(images, scale)


def _check_scales(aux: Mapping[str, Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    if not aux:
        raise ValueError("aux holds no guided stage; call the model with return_aux=True")
    stages = [stage for stage in aux.values() if key in stage]
    if not stages:
        raise ValueError(f"no stage in aux has {key!r} (model without that part?)")
    return stages


def mask_loss(aux: Mapping[str, Mapping[str, Any]], mask: Tensor) -> Tensor:
    """Eq. 9: sum over the guided scales of the cross-entropy between ``p`` and the resized mask.

    Args:
        aux: the model's aux output: per stage ``blur_logit`` (B, 1, h, w), ``log p_blur - log p_sharp``,
            and ``scale``.
        mask: (B, 1, H, W) ground-truth blur mask at input resolution (all ones without annotation).

    Returns:
        0-dim tensor: sum over scales of the mean binary cross-entropy (the two-class softmax
        cross-entropy of Eq. 9 written with the logit difference, which is exact and stable).

    >>> aux = {"encoder1": {"scale": 2, "blur_logit": torch.zeros(1, 1, 2, 2)}}
    >>> round(mask_loss(aux, torch.ones(1, 1, 4, 4)).item(), 4)  # p = 1/2 everywhere: log 2
    0.6931
    """
    total = mask.new_zeros(())
    for stage in _check_scales(aux, "blur_logit"):
        logit = stage["blur_logit"]
        size = (logit.shape[-2], logit.shape[-1])
        target = downsample_mask(_resize_like_model(mask.to(logit.dtype), size, stage["scale"]), size)
        total = total + F.binary_cross_entropy_with_logits(logit, target)
    return total


def total_variation(field: Tensor) -> Tensor:
    """Anisotropic TV: mean |horizontal difference| + mean |vertical difference| over (..., H, W).

    >>> total_variation(torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    tensor(1.)
    """
    horizontal = (field[..., :, 1:] - field[..., :, :-1]).abs().mean()
    vertical = (field[..., 1:, :] - field[..., :-1, :]).abs().mean()
    return horizontal + vertical


def reblur_loss(
    sharp: Tensor,
    blur: Tensor,
    displacement_start: Tensor,
    displacement_end: Tensor,
    *,
    scale: int = 1,
    num_instants: int = DEFAULT_REBLUR_INSTANTS,
    trajectory: str = "quadratic",
    tv_weight: float = DEFAULT_TV_WEIGHT,
) -> Tensor:
    """Eq. 10-11 at one scale: ``MSE(mean_n Warp(sharp, o(t_n)), blur) + tv_weight * sum_n TV(o(t_n))``.

    Args:
        sharp, blur: (B, C, H, W) at input resolution; zero-padded as the model pads its input and
            area-averaged to the displacements' size (``scale`` times smaller).
        displacement_start, displacement_end: (B, 2, h, w) o(t_0) and o(t_{N-1}) in pixels of the scale.
        scale: the displacements' downsampling factor.
        num_instants: N2, the instants of the trajectory (Eq. 4 or 12) the sharp frame is warped to.
        trajectory: ``"quadratic"`` (Eq. 4) or ``"linear"`` (Eq. 12), as the model.
        tv_weight: alpha.

    Zero displacements warp nothing, so the reblur term is then ``MSE(sharp, blur)``:

    >>> sharp, blur = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    >>> zero = torch.zeros(1, 2, 4, 4)
    >>> reblur_loss(sharp, blur, zero, zero).item()
    0.25
    """
    _check_pair(sharp, blur)
    if trajectory not in TRAJECTORIES:
        raise ValueError(f"trajectory must be one of {tuple(TRAJECTORIES)}, got {trajectory!r}")
    size = (displacement_start.shape[-2], displacement_start.shape[-1])
    sharp_scaled = _resize_like_model(sharp, size, scale)
    blur_scaled = _resize_like_model(blur, size, scale)
    instants = TRAJECTORIES[trajectory](displacement_start, displacement_end, num_instants)  # (B, N, 2, h, w)
    batch = sharp_scaled.shape[0]
    # All instants in one splatting call: the sharp frame repeated N times along the batch.
    warped = forward_warp(
        sharp_scaled.repeat_interleave(num_instants, dim=0), instants.flatten(0, 1).to(sharp_scaled.dtype)
    )
    reblurred = warped.view(batch, num_instants, *warped.shape[1:]).mean(dim=1)  # Eq. 11, mean of the frames
    smoothness = num_instants * total_variation(instants)  # sum over n of the per-instant mean TV
    return F.mse_loss(reblurred, blur_scaled) + tv_weight * smoothness


class ReconstructionLoss(nn.Module):
    """Module form of :func:`reconstruction_loss`: ``forward(prediction, target)``.

    >>> ReconstructionLoss()(torch.ones(1, 3, 12, 12), torch.ones(1, 3, 12, 12)).item()
    0.0
    """

    def __init__(self, fft_weight: float = 0.1) -> None:
        super().__init__()
        self.fft_weight = fft_weight

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return reconstruction_loss(prediction, target, fft_weight=self.fft_weight)

    def extra_repr(self) -> str:
        return f"fft_weight={self.fft_weight}"


class M2AENetLoss(nn.Module):
    """Eq. 7: ``L_recon + mask_weight * L_mask + L_offset`` from the model output and the batch.

    ``forward(restored, aux, batch)`` with ``restored, aux = model(batch["blur"], return_aux=True)`` and
    ``batch`` holding ``blur``, ``sharp`` (B, 3, H, W) and optionally ``mask`` (B, 1, H, W) (all ones
    when absent). Terms whose parts the model lacks (no mask predictor, no analyser) are zero. Returns
    a dict: ``loss`` (the total, to backpropagate) and the unweighted terms ``reconstruction``,
    ``mask``, ``reblur`` (the sum over scales of Eq. 11's MSE plus alpha times the TV), all 0-dim.

    Args:
        fft_weight: gamma of Eq. 8 (0.1).
        mask_weight: lambda of Eq. 7 (0.01).
        tv_weight: alpha of Eq. 10 (not in the paper; :data:`DEFAULT_TV_WEIGHT`).
        num_instants: N2 of Eq. 10 (9).

    >>> from adeblur.models import build_model
    >>> model = build_model("m2aenet", width=8, encoder_blocks=(1, 1), decoder_blocks=(1, 1))
    >>> batch = {"blur": torch.rand(2, 3, 16, 16), "sharp": torch.rand(2, 3, 16, 16)}
    >>> terms = M2AENetLoss()(*model(batch["blur"], return_aux=True), batch)
    >>> sorted(terms), terms["loss"].requires_grad
    (['loss', 'mask', 'reblur', 'reconstruction'], True)
    """

    def __init__(
        self,
        fft_weight: float = 0.1,
        mask_weight: float = 0.01,
        tv_weight: float = DEFAULT_TV_WEIGHT,
        num_instants: int = DEFAULT_REBLUR_INSTANTS,
    ) -> None:
        super().__init__()
        self.fft_weight = fft_weight
        self.mask_weight = mask_weight
        self.tv_weight = tv_weight
        self.num_instants = num_instants

    def forward(
        self, restored: Tensor, aux: Mapping[str, Mapping[str, Any]], batch: Mapping[str, Any]
    ) -> dict[str, Tensor]:
        blur, sharp = batch["blur"], batch["sharp"]
        reconstruction = reconstruction_loss(restored, sharp, fft_weight=self.fft_weight)
        zero = reconstruction.new_zeros(())
        guided = list(aux.values())
        masked = any("blur_logit" in stage for stage in guided)
        mask_term = mask_loss(aux, blur_mask_or_ones(batch)) if masked else zero
        reblur = zero
        for stage in guided:
            if "displacement_start" in stage:
                reblur = reblur + reblur_loss(
                    sharp, blur, stage["displacement_start"], stage["displacement_end"], scale=stage["scale"],
                    num_instants=self.num_instants, trajectory=stage["trajectory"], tv_weight=self.tv_weight,
                )  # fmt: skip
        total = reconstruction + self.mask_weight * mask_term + reblur
        return {
            "loss": total,
            "reconstruction": reconstruction.detach(),
            "mask": mask_term.detach(),
            "reblur": reblur.detach(),
        }

    def extra_repr(self) -> str:
        return (
            f"fft_weight={self.fft_weight}, mask_weight={self.mask_weight}, tv_weight={self.tv_weight}, "
            f"num_instants={self.num_instants}"
        )
