"""Tests of adeblur.losses against hand-computed values and independent references (numpy, scikit-image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from adeblur.losses import (
    DEFAULT_TV_WEIGHT,
    M2AENetLoss,
    ReconstructionLoss,
    blur_mask_or_ones,
    fft_loss,
    mask_loss,
    reblur_loss,
    reconstruction_loss,
    total_variation,
)


def images(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_fft_loss_against_numpy():
    prediction, target = images(0, 2, 3, 8, 10).double(), images(1, 2, 3, 8, 10).double()
    spectrum = np.fft.rfft2(prediction.numpy()) - np.fft.rfft2(target.numpy())
    expected = (np.abs(spectrum.real).mean() + np.abs(spectrum.imag).mean()) / 2
    assert fft_loss(prediction, target).item() == pytest.approx(expected, rel=1e-10)


def test_reconstruction_loss_is_l1_plus_one_minus_ssim_plus_tenth_fft():
    prediction, target = images(2, 2, 3, 24, 20), images(3, 2, 3, 24, 20)
    p, t = prediction.double().numpy(), target.double().numpy()
    ssim = np.mean(
        [
            structural_similarity(p[i], t[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=1.0, channel_axis=0)  # fmt: skip
            for i in range(2)
        ]
    )
    spectrum = np.fft.rfft2(p) - np.fft.rfft2(t)
    fft = (np.abs(spectrum.real).mean() + np.abs(spectrum.imag).mean()) / 2
    expected = np.abs(p - t).mean() + (1 - ssim) + 0.1 * fft
    assert reconstruction_loss(prediction, target).item() == pytest.approx(expected, rel=1e-4)
    without_fft = ReconstructionLoss(fft_weight=0.0)(prediction, target).item()
    assert without_fft == pytest.approx(expected - 0.1 * fft, rel=1e-4)


def test_reconstruction_loss_is_differentiable_and_zero_at_the_target():
    target = images(4, 1, 3, 16, 16)
    prediction = target.clone().requires_grad_(True)
    loss = reconstruction_loss(prediction, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    reconstruction_loss(prediction + 0.1 * images(5, 1, 3, 16, 16), target).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0


def bce(logit: float, label: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_mask_loss_resizes_by_area_then_half():
    # A 6x6 input padded to 8x8 as the model pads it, at scale 4: a 2x2 map of 4x4 cells.
    mask = torch.zeros(1, 1, 6, 6)
    mask[0, 0, :4, :2] = 1  # cell (0, 0): 8 of 16 pixels -> blurred (>= 1/2)
    mask[0, 0, :2, 4:] = 1  # cell (0, 1): 4 of 16 (the padding is sharp) -> sharp
    mask[0, 0, 4:, 4:] = 1  # cell (1, 1): 4 of 16 -> sharp
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0]]).view(1, 1, 2, 2)
    labels = [1.0, 0.0, 0.0, 0.0]
    expected = np.mean([bce(l, y) for l, y in zip(logits.flatten().tolist(), labels)])
    aux = {"encoder3": {"scale": 4, "blur_logit": logits}}
    assert mask_loss(aux, mask).item() == pytest.approx(expected, rel=1e-6)
    # summed over the scales (Eq. 9)
    aux["encoder2"] = {"scale": 2, "blur_logit": torch.zeros(1, 1, 4, 4)}
    assert mask_loss(aux, mask).item() == pytest.approx(expected + math.log(2), rel=1e-6)


def test_mask_loss_needs_logits():
    with pytest.raises(ValueError, match="return_aux"):
        mask_loss({}, torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="blur_logit"):
        mask_loss({"encoder4": {"scale": 8}}, torch.ones(1, 1, 8, 8))


def test_total_variation_by_hand():
    field = torch.tensor([[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
    # horizontal |1| |2| |0| |0| -> mean 3/4; vertical |0| |1| |3| -> mean 4/3
    assert total_variation(field).item() == pytest.approx(3 / 4 + 4 / 3)


def test_reblur_of_zero_motion_is_mse_of_the_resized_images():
    sharp, blur = images(6, 2, 3, 12, 12), images(7, 2, 3, 12, 12)
    zero = torch.zeros(2, 2, 3, 3)
    sharp_small = sharp.view(2, 3, 3, 4, 3, 4).mean(dim=(3, 5))  # area average by 4
    blur_small = blur.view(2, 3, 3, 4, 3, 4).mean(dim=(3, 5))
    expected = ((sharp_small - blur_small) ** 2).mean().item()
    assert reblur_loss(sharp, blur, zero, zero, scale=4).item() == pytest.approx(expected, rel=1e-6)


def shift_right(image: np.ndarray, step: int) -> np.ndarray:
    """Forward warp by an integer step along x; pixels nothing lands on keep their value."""
    out = image.copy()
    if step > 0:
        out[..., step:] = image[..., :-step]
    elif step < 0:
        out[..., :step] = image[..., -step:]
    return out


def test_reblur_averages_the_warped_frames():
    # Linear trajectory through -1, 0, +1 pixel along x with N2 = 3: the mean of three shifted copies.
    sharp, blur = images(8, 1, 3, 5, 7), images(9, 1, 3, 5, 7)
    start = torch.zeros(1, 2, 5, 7)
    start[:, 0] = -1.0
    end = -start
    s = sharp.double().numpy()
    reblurred = (shift_right(s, -1) + s + shift_right(s, 1)) / 3
    expected = ((reblurred - blur.double().numpy()) ** 2).mean()
    loss = reblur_loss(sharp, blur, start, end, num_instants=3, trajectory="linear", tv_weight=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)  # constant fields: zero TV


def test_reblur_tv_term_sums_over_the_instants():
    sharp = images(10, 1, 3, 4, 4)
    start = torch.zeros(1, 2, 4, 4)
    start[0, 0, :, 2:] = 0.5  # a step of 0.5 in x between columns 1 and 2
    end = -start
    without = reblur_loss(sharp, sharp, start, end, num_instants=3, trajectory="linear", tv_weight=0.0)
    with_tv = reblur_loss(sharp, sharp, start, end, num_instants=3, trajectory="linear", tv_weight=2.0)
    # instants -1, 0, +1: fields start, 0, end; TV of start = mean |dx| over (2, 4, 3) = 0.5 * 4 / 24
    per_instant = 0.5 * 4 / 24
    assert (with_tv - without).item() == pytest.approx(2.0 * 2 * per_instant, rel=1e-6)


def test_reblur_gradient_reaches_the_displacements():
    sharp = images(11, 1, 3, 8, 8)
    blur = torch.roll(sharp, 1, dims=-1)
    start = torch.full((1, 2, 8, 8), 0.3, requires_grad=True)
    end = torch.full((1, 2, 8, 8), 0.2, requires_grad=True)
    reblur_loss(sharp, blur, start, end).backward()
    assert start.grad.abs().sum() > 0 and end.grad.abs().sum() > 0


def test_reblur_rejects_sizes_that_do_not_fit():
    image, zero = torch.rand(1, 3, 20, 20), torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="do not fit"):
        reblur_loss(image, image, zero, zero, scale=8)


def test_blur_mask_or_ones():
    mask = torch.zeros(2, 1, 3, 3)
    assert blur_mask_or_ones({"blur": torch.rand(2, 3, 3, 3), "mask": mask}) is mask
    assert torch.equal(blur_mask_or_ones({"blur": torch.rand(2, 3, 3, 3)}), torch.ones(2, 1, 3, 3))


def test_m2aenet_loss_combines_the_terms():
    generator = torch.Generator().manual_seed(12)
    batch = {"blur": images(13, 2, 3, 16, 16), "sharp": images(14, 2, 3, 16, 16)}
    restored = images(15, 2, 3, 16, 16)
    stage = {
        "scale": 8,
        "blur_logit": torch.randn(2, 1, 2, 2, generator=generator),
        "displacement_start": torch.randn(2, 2, 2, 2, generator=generator),
        "displacement_end": torch.randn(2, 2, 2, 2, generator=generator),
        "trajectory": "quadratic",
    }
    aux = {"encoder4": stage}
    terms = M2AENetLoss()(restored, aux, batch)
    ones = torch.ones(2, 1, 16, 16)
    reconstruction = reconstruction_loss(restored, batch["sharp"])
    mask = mask_loss(aux, ones)
    reblur = reblur_loss(
        batch["sharp"], batch["blur"], stage["displacement_start"], stage["displacement_end"], scale=8,
        tv_weight=DEFAULT_TV_WEIGHT,
    )  # fmt: skip
    torch.testing.assert_close(terms["loss"], reconstruction + 0.01 * mask + reblur)
    torch.testing.assert_close(terms["mask"], mask)  # no mask in the batch: all ones
    torch.testing.assert_close(terms["reblur"], reblur)
    # a model without mask predictor or analyser: those terms are zero
    only_motion = {"encoder4": {k: v for k, v in stage.items() if k != "blur_logit"}}
    assert M2AENetLoss()(restored, only_motion, batch)["mask"].item() == 0.0
    only_mask = {"encoder4": {"scale": 8, "blur_logit": stage["blur_logit"]}}
    assert M2AENetLoss()(restored, only_mask, batch)["reblur"].item() == 0.0


def test_psnr_loss_is_minus_the_mean_per_image_psnr():
    from adeblur.losses import psnr_loss
    from adeblur.metrics import psnr

    generator = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 16, 16, generator=generator, dtype=torch.float64)
    prediction = (target + 0.05 * torch.randn(3, 3, 16, 16, generator=generator, dtype=torch.float64)).clamp(0, 1)
    prediction[2] = target[2] + 0.2  # one image much worse: it weighs no more than the others
    expected = -sum(float(psnr(prediction[i : i + 1], target[i : i + 1])) for i in range(3)) / 3
    assert float(psnr_loss(prediction, target)) == pytest.approx(expected, abs=1e-4)  # eps = 1e-8 in the MSE
    prediction.requires_grad_(True)
    psnr_loss(prediction, target).backward()
    assert bool(torch.isfinite(prediction.grad).all())
