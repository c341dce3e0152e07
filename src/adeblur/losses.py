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

SAPHNet with adaptive sampling (TPAMI Sec. 3.1.1, Eq. 4-7; ``docs/saphnet-as.md`` "Training"):
:class:`AdaptiveSamplingLoss` supervises every stage output (:func:`stage_supervision_loss`) and, in
the joint phase, trains the policy heads by REINFORCE on :func:`adeblur.ops.sampling_reward` with a
self-critical or leave-one-out baseline; :func:`sampling_density_counts` and :func:`density_ratios`
measure where the processed pixels fall relative to the ground-truth blur mask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.errors import ConfigError
from adeblur.metrics import ssim
from adeblur.models.m2aenet import TRAJECTORIES, downsample_mask
from adeblur.ops import forward_warp, leave_one_out_baseline, policy_gradient_loss, sampling_reward

__all__ = [
    "DEFAULT_TV_WEIGHT",
    "AdaptiveSamplingLoss",
    "M2AENetLoss",
    "ReconstructionLoss",
    "blur_mask_or_ones",
    "density_ratios",
    "fft_loss",
    "mask_loss",
    "psnr_loss",
    "reblur_loss",
    "reconstruction_loss",
    "sampling_density_counts",
    "stage_supervision_loss",
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


def psnr_loss(prediction: Tensor, target: Tensor, *, eps: float = 1e-8) -> Tensor:
    """NAFNet's PSNR loss: the mean over images of ``10 log10(MSE + eps)``, i.e. minus their PSNR in dB
    for a peak of 1 (each image weighs the same however sharp it already is, unlike a pooled MSE).

    >>> x = torch.zeros(2, 1, 4, 4)
    >>> round(psnr_loss(x + 0.1, x).item(), 4)
    -20.0
    """
    _check_pair(prediction, target)
    mse = (prediction - target).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(mse + eps)).mean()


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


# --------------------------------------------------------------------------------------------------
# SAPHNet / DMPHN with pixel-adaptive sampling (TPAMI Sec. 3.1.1, Eq. 4-7)

#: Distances of the per-stage supervision (means over all elements); DMPHN and SAPHNet train with MSE.
STAGE_DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mse": F.mse_loss, "l1": F.l1_loss}
#: Baselines of the REINFORCE term of :class:`AdaptiveSamplingLoss`.
SAMPLING_BASELINES = ("self-critical", "leave-one-out")


def stage_supervision_loss(
    stage_outputs: Sequence[Tensor],
    target: Tensor,
    *,
    stage_weights: Sequence[float] | None = None,
    distance: str = "mse",
) -> tuple[Tensor, list[Tensor]]:
    """Ground-truth supervision of every stage: ``sum_s w_s * d(output_s, target)``.

    Args:
        stage_outputs: S restored images (B, C, H, W), bottom stage first (``aux["stage_outputs"]``).
        target: (B, C, H, W) sharp images.
        stage_weights: S floats (default: all 1, every stage supervised alike).
        distance: ``"mse"`` (DMPHN, SAPHNet) or ``"l1"``, the mean over all elements.

    Returns:
        ``(total, [d_1, ..., d_S])``: 0-dim tensors, the per-stage distances unweighted.

    >>> target = torch.zeros(1, 1, 2, 2)
    >>> outputs = [torch.full_like(target, 0.5), torch.full_like(target, 0.25)]
    >>> total, terms = stage_supervision_loss(outputs, target, stage_weights=[1.0, 2.0])
    >>> total.item(), [term.item() for term in terms]  # 0.25 + 2 * 0.0625
    (0.375, [0.25, 0.0625])
    """
    if distance not in STAGE_DISTANCES:
        raise ValueError(f"distance must be one of {tuple(STAGE_DISTANCES)}, got {distance!r}")
    if not stage_outputs:
        raise ValueError("stage_outputs must hold at least one stage's output")
    weights = [1.0] * len(stage_outputs) if stage_weights is None else list(stage_weights)
    if len(weights) != len(stage_outputs):
        raise ValueError(f"{len(weights)} stage_weights for {len(stage_outputs)} stage_outputs")
    terms = []
    for output in stage_outputs:
        _check_pair(output, target)
        terms.append(STAGE_DISTANCES[distance](output, target))
    total = sum((weight * term for weight, term in zip(weights, terms)), terms[0].new_zeros(()))
    return total, terms


def sampling_density_counts(
    pixel_index: Tensor,
    mask: Tensor,
    *,
    selection_size: tuple[int, int],
    selection_scale: int,
    skip: int = 0,
) -> dict[str, Tensor]:
    """Where a sampled stage's points fall relative to a blur mask, per image.

    The mask is zero-padded as the model pads its input and area-averaged to the selection grid, so
    each cell has the fraction ``m`` of its ``selection_scale``-squared input pixels that are blurred
    and the fraction ``v`` that lies inside the image (below 1 only on cells over the padding). A point
    counts ``m`` of its cell inside the mask and ``v - m`` outside; the grid's area is ``sum m`` cells
    inside and ``sum (v - m)`` outside.

    Args:
        pixel_index: (B, K) per-image indices ``y * Ws + x`` on the selection grid (``aux["pixel_index"]``).
        mask: (B, 1, H, W) ground-truth blur mask at input resolution (1 = blurred).
        selection_size: (Hs, Ws) of the selection grid (``aux["selection_size"]``).
        selection_scale: input pixels per cell side (``aux["selection_scale"]``).
        skip: leave the first ``skip`` points out (``aux["num_anchors"]``: count the policy's choices only).

    Returns:
        (B,) float tensors ``points_inside``, ``points_outside``, ``area_inside``, ``area_outside``.

    >>> mask = torch.zeros(1, 1, 4, 4); mask[..., :2, :] = 1  # the top half is blurred
    >>> counts = sampling_density_counts(torch.tensor([[0, 1, 2]]), mask, selection_size=(2, 2), selection_scale=2)
    >>> {key: value.tolist() for key, value in counts.items()}  # two points in the top row, one below
    {'points_inside': [2.0], 'points_outside': [1.0], 'area_inside': [2.0], 'area_outside': [2.0]}
    """
    if pixel_index.dim() != 2 or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != pixel_index.shape[0]:
        raise ValueError(
            f"expected pixel_index (B, K) and mask (B, 1, H, W), got {tuple(pixel_index.shape)} and {tuple(mask.shape)}"
        )
    size = (int(selection_size[0]), int(selection_size[1]))
    mask = mask.detach().float()
    blurred = _resize_like_model(mask, size, selection_scale).flatten(1)
    inside_image = _resize_like_model(torch.ones_like(mask), size, selection_scale).flatten(1)
    sharp = inside_image - blurred
    points = pixel_index[:, skip:]
    return {
        "points_inside": blurred.gather(1, points).sum(1),
        "points_outside": sharp.gather(1, points).sum(1),
        "area_inside": blurred.sum(1),
        "area_outside": sharp.sum(1),
    }


def density_ratios(counts: Mapping[str, Tensor], *, tolerance: float = 1e-6) -> dict[str, Tensor]:
    """Sampling density inside vs outside the blur mask, pooled over the partially blurred images.

    * ``density_ratio`` = (share of the points inside the mask) / (share of the area the mask covers):
      1 for uniform sampling, above 1 when blurred pixels are processed more densely than the image
      on average (at most 1 / the mask's share).
    * ``inside_outside_ratio`` = (points per blurred cell) / (points per sharp cell).

    Sums over the images come first (pooled). Images whose mask is empty or full (no more than
    ``tolerance`` cells outside or inside; e.g. camera shake, whose mask is all ones) say nothing about
    where the points go and are left out; when none is left, the result is an empty dict.

    Args:
        counts: from :func:`sampling_density_counts` (or their sums over stages).

    >>> counts = {"points_inside": torch.tensor([2.0, 4.0]), "points_outside": torch.tensor([1.0, 0.0]),
    ...           "area_inside": torch.tensor([2.0, 4.0]), "area_outside": torch.tensor([2.0, 0.0])}
    >>> {key: round(value.item(), 4) for key, value in density_ratios(counts).items()}  # image 2: full mask
    {'density_ratio': 1.3333, 'inside_outside_ratio': 2.0}
    """
    partial = (counts["area_inside"] > tolerance) & (counts["area_outside"] > tolerance)
    if not bool(partial.any()):
        return {}
    points_inside, points_outside, area_inside, area_outside = (
        counts[key][partial].sum() for key in ("points_inside", "points_outside", "area_inside", "area_outside")
    )
    share_of_points = points_inside / (points_inside + points_outside)
    share_of_area = area_inside / (area_inside + area_outside)
    return {
        "density_ratio": share_of_points / share_of_area,
        "inside_outside_ratio": (points_inside / area_inside) / (points_outside / area_outside),
    }


class AdaptiveSamplingLoss(nn.Module):
    """The two-phase training objective of SAPHNet / DMPHN with pixel-adaptive sampling (TPAMI Sec. 3.1.1).

    ``forward(model, batch, *, policy, generator=None)`` runs ``model`` (a
    :class:`~adeblur.models.SAPHNetAS` or :class:`~adeblur.models.DMPHNAS`, possibly wrapped by DDP) on
    ``batch["blur"]`` and returns its terms; ``policy`` is the phase, :meth:`policy_at` of the step:

    * ``"uniform"`` (pre-training, steps ``< pretrain_steps``): one pass on the uniform lattice;
      ``loss`` = the per-stage supervision (:func:`stage_supervision_loss`); no policy term.
    * ``"sample"`` (joint training): one pass with exactly-K Plackett-Luce draws from the policy heads
      (``generator``); ``loss`` = the per-stage supervision *of that pass* +
      ``policy_weight * policy_gradient_loss(log pi, R, b)`` (Eq. 6-7, one draw per image), with
      ``log pi`` the sum of the sampled stages' ``log_prob`` (the pair of selections is one action),
      ``R`` = :func:`~adeblur.ops.sampling_reward` (Eq. 5) of the stages after the first (those a
      selection changes), and the baseline ``b``: ``"self-critical"``, the reward of a top-K pass of the
      same images under ``torch.no_grad`` (run first; one more forward), or ``"leave-one-out"``, the
      mean reward of the other images of the batch (free; batches of 2 or more). Eq. 5's over-budget
      penalty is identically 0: exactly K pixels are drawn. The restoration gradient never reaches the
      policy heads and the policy gradient never reaches the restoration network (the heads read the
      previous stage's output detached).

    Args:
        pretrain_steps: optimiser steps of the pre-training phase (0: joint training from the start).
        stage_weights: weights of the S stage outputs in the supervision (default all 1).
        distance: ``"mse"`` (DMPHN, SAPHNet; default) or ``"l1"``.
        baseline: ``"self-critical"`` (default) or ``"leave-one-out"``.
        reward_stage_weights: weights of the S - 1 sampled stages in the reward (default all
            ``1 / (S - 1)``).
        reward_distance: the reward's pixel accuracy, ``"l1"`` (minus the mean absolute error; default)
            or ``"l2"`` (minus the mean squared error).
        policy_weight: weight of the policy-gradient term.

    Returns (from ``forward``) 0-dim tensors: ``loss`` (to backpropagate), ``restoration`` (the
    weighted supervision), ``stage1`` ... ``stageS`` (each stage's distance), ``reward`` (batch mean of
    R for this pass), in the joint phase ``policy_loss`` and ``baseline`` (batch mean), and
    ``density_ratio``, ``inside_outside_ratio`` (:func:`density_ratios` of the processed points of
    both sampled stages vs ``batch["mask"]``) when the batch has a partially blurred image.

    >>> from adeblur.models import build_model
    >>> model = build_model("dmphn-as", widths=(4, 8, 16), blocks=1, policy_channels=4)
    >>> batch = {"blur": torch.rand(2, 3, 16, 16), "sharp": torch.rand(2, 3, 16, 16)}
    >>> loss = AdaptiveSamplingLoss(pretrain_steps=10)
    >>> loss.policy_at(9), loss.policy_at(10)
    ('uniform', 'sample')
    >>> terms = loss(model, batch, policy="sample", generator=torch.Generator().manual_seed(0))
    >>> list(terms)
    ['loss', 'restoration', 'stage1', 'stage2', 'stage3', 'reward', 'policy_loss', 'baseline']
    """

    def __init__(
        self,
        pretrain_steps: int = 0,
        stage_weights: Sequence[float] | None = None,
        distance: str = "mse",
        baseline: str = "self-critical",
        reward_stage_weights: Sequence[float] | None = None,
        reward_distance: str = "l1",
        policy_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(pretrain_steps, bool) or not isinstance(pretrain_steps, int) or pretrain_steps < 0:
            raise ValueError(f"pretrain_steps must be an integer >= 0, got {pretrain_steps!r}")
        if distance not in STAGE_DISTANCES:
            raise ValueError(f"distance must be one of {tuple(STAGE_DISTANCES)}, got {distance!r}")
        if baseline not in SAMPLING_BASELINES:
            raise ValueError(f"baseline must be one of {SAMPLING_BASELINES}, got {baseline!r}")
        if reward_distance not in ("l1", "l2"):
            raise ValueError(f"reward_distance must be 'l1' or 'l2', got {reward_distance!r}")
        if not float(policy_weight) >= 0:
            raise ValueError(f"policy_weight must be >= 0, got {policy_weight!r}")
        self.pretrain_steps = pretrain_steps
        self.stage_weights = None if stage_weights is None else [float(w) for w in stage_weights]
        self.distance = distance
        self.baseline = baseline
        self.reward_stage_weights = None if reward_stage_weights is None else [float(w) for w in reward_stage_weights]
        self.reward_distance = reward_distance
        self.policy_weight = float(policy_weight)

    def policy_at(self, step: int) -> str:
        """The phase of (0-based) step ``step``: ``"uniform"`` before ``pretrain_steps``, then ``"sample"``."""
        return "uniform" if step < self.pretrain_steps else "sample"

    def reward(self, stage_outputs: Sequence[Tensor], target: Tensor) -> Tensor:
        """(B,) Eq. 5 for one pass: :func:`~adeblur.ops.sampling_reward` of the stages after the first."""
        return sampling_reward(
            stage_outputs[1:], target, stage_weights=self.reward_stage_weights, distance=self.reward_distance
        )

    def forward(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        *,
        policy: str,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        if policy not in ("uniform", "sample"):
            raise ValueError(f"policy must be 'uniform' (pre-training) or 'sample' (joint), got {policy!r}")
        blur, sharp = batch["blur"], batch["sharp"]
        baseline = None
        if policy == "sample" and self.baseline == "self-critical":
            with torch.no_grad():
                _, greedy = model(blur, return_aux=True, policy="top-k")
            baseline = self.reward(greedy["stage_outputs"], sharp)
        _, aux = model(blur, return_aux=True, policy=policy, generator=generator)
        stages = aux["stage_outputs"]
        if len(stages) < 2:
            raise ValueError("the model has no sampled stage (levels=(1,)): use another loss")
        restoration, stage_terms = stage_supervision_loss(
            stages, sharp, stage_weights=self.stage_weights, distance=self.distance
        )
        reward = self.reward(stages, sharp)
        terms = {
            "restoration": restoration.detach(),
            **{f"stage{index}": term.detach() for index, term in enumerate(stage_terms, start=1)},
            "reward": reward.mean(),
        }
        total = restoration
        if policy == "sample":
            if any(log_prob is None for log_prob in aux["log_prob"]):
                raise ValueError("the model drew no sample (a sampling='uniform' model has no policy to train)")
            if baseline is None:
                if reward.shape[0] < 2:
                    raise ConfigError(
                        "config key 'loss.options.baseline': leave-one-out needs at least 2 images per batch "
                        "(data.batch_size), got 1"
                    )
                baseline = leave_one_out_baseline(reward)
            log_prob = torch.stack([log_prob.float() for log_prob in aux["log_prob"]]).sum(0)
            policy_term = policy_gradient_loss(log_prob, reward.float(), baseline.float())
            total = total + self.policy_weight * policy_term
            terms.update(policy_loss=policy_term.detach(), baseline=baseline.mean())
        if batch.get("mask") is not None:
            terms.update(self.density(aux, batch["mask"]))
        return {"loss": total, **terms}

    @staticmethod
    def density(aux: Mapping[str, Any], mask: Tensor) -> dict[str, Tensor]:
        """:func:`density_ratios` of the points of every sampled stage of ``aux`` (counts summed over stages)."""
        total: dict[str, Tensor] = {}
        for pixel_index in aux["pixel_index"]:
            counts = sampling_density_counts(
                pixel_index, mask, selection_size=aux["selection_size"], selection_scale=aux["selection_scale"]
            )
            total = {key: total.get(key, 0) + value for key, value in counts.items()}
        return density_ratios(total) if total else {}

    def extra_repr(self) -> str:
        return (
            f"pretrain_steps={self.pretrain_steps}, stage_weights={self.stage_weights}, distance={self.distance!r}, "
            f"baseline={self.baseline!r}, reward_stage_weights={self.reward_stage_weights}, "
            f"reward_distance={self.reward_distance!r}, policy_weight={self.policy_weight}"
        )
