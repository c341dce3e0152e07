"""Tests of adeblur.models.classical against scikit-image / scipy and slow spatial-domain references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.filters import unsharp_mask as skimage_unsharp_mask
from skimage.restoration import richardson_lucy as skimage_richardson_lucy
from skimage.restoration import wiener as skimage_wiener

from adeblur.data.synth import synthesize_global_blur
from adeblur.errors import KernelError
from adeblur.metrics import psnr
from adeblur.models import build_model
from adeblur.models.classical import (
    RichardsonLucy,
    UnsharpMask,
    WienerDeconvolution,
    gaussian_blur,
    richardson_lucy,
    unsharp_mask,
    wiener_deconvolution,
)


def _random(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def _batch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)[None, None]


def _mirror_blur_reference(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Slow reference of the ``symmetric`` blur model: mirror to 2H x 2W, circular convolution tap by tap
    (kernel centre ``(Kh // 2, Kw // 2)``), crop the original."""
    height, width = image.shape
    mirrored = np.concatenate([image, image[:, ::-1]], axis=1)
    mirrored = np.concatenate([mirrored, mirrored[::-1]], axis=0)
    out = np.zeros_like(mirrored)
    kernel_h, kernel_w = kernel.shape
    for i in range(kernel_h):
        for j in range(kernel_w):
            out += kernel[i, j] * np.roll(mirrored, (i - kernel_h // 2, j - kernel_w // 2), axis=(0, 1))
    return out[:height, :width]


# --------------------------------------------------------------------------------------------------
# Wiener


@pytest.mark.parametrize(("prior", "reg"), [("laplacian", None), ("identity", np.ones((1, 1)))])
def test_wiener_matches_skimage_with_circular_border(prior, reg):
    image, kernel = _random((30, 34), 0), _random((5, 7), 1)  # even and odd sides, off-centre mass
    kernel /= kernel.sum()
    expected = skimage_wiener(image, kernel, 0.05, reg=reg, clip=False)
    restored = wiener_deconvolution(
        _batch(image), torch.from_numpy(kernel), nsr=0.05, prior=prior, border="circular", recenter=False
    )
    assert restored.dtype == torch.float64
    np.testing.assert_allclose(restored[0, 0].numpy(), expected, atol=1e-10)


def test_wiener_inverts_the_symmetric_border_blur_model():
    sharp = _random((20, 26), 2)
    # Symmetric (so the mirrored blur is the mirror of the blur) and |K| >= 0.02: exactly invertible.
    kernel = np.outer([0.2, 0.6, 0.2], [0.1, 0.2, 0.4, 0.2, 0.1])
    blurred = _mirror_blur_reference(sharp, kernel)
    restored = wiener_deconvolution(_batch(blurred), torch.from_numpy(kernel), nsr=1e-12, prior="identity")
    np.testing.assert_allclose(restored[0, 0].numpy(), sharp, atol=1e-6)
    circular = wiener_deconvolution(
        _batch(blurred), torch.from_numpy(kernel), nsr=1e-12, prior="identity", border="circular"
    )
    assert np.abs(circular[0, 0].numpy() - sharp).max() > 1e-3  # the wrong border model does not invert it


def test_recentering_moves_the_kernel_mass_to_the_centre():
    image = torch.rand(1, 3, 12, 14, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    corner = torch.zeros(3, 3, dtype=torch.float64)
    corner[0, 0] = 1.0  # a shift by one pixel up-left about the centre anchor
    recentred = wiener_deconvolution(image, corner, nsr=1e-12, prior="identity")
    torch.testing.assert_close(recentred, image)
    shifted = wiener_deconvolution(image, corner, nsr=1e-12, prior="identity", border="circular", recenter=False)
    torch.testing.assert_close(shifted, image.roll((1, 1), dims=(-2, -1)))


def test_per_image_kernels_equal_separate_calls_and_dtype_is_kept():
    images = torch.rand(2, 3, 16, 18, generator=torch.Generator().manual_seed(1))
    kernels = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    both = wiener_deconvolution(images, kernels)
    assert both.dtype == torch.float32 and both.shape == images.shape
    for index in range(2):
        alone = wiener_deconvolution(images[index : index + 1], kernels[index])
        torch.testing.assert_close(both[index : index + 1], alone)
    both = richardson_lucy(images, kernels, iterations=3)
    for index in range(2):
        alone = richardson_lucy(images[index : index + 1], kernels[index : index + 1], iterations=3)
        torch.testing.assert_close(both[index : index + 1], alone)


@pytest.mark.parametrize("method", [wiener_deconvolution, richardson_lucy])
def test_grey_read_as_rgb_equals_the_grey_channel(method):
    grey = torch.rand(1, 1, 16, 18, generator=torch.Generator().manual_seed(4))
    kernel = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(5))
    rgb = torch.cat([grey, grey, torch.rand_like(grey)], dim=1)  # two equal channels and a different one
    restored = method(rgb, kernel)
    torch.testing.assert_close(restored[:, :1], method(grey, kernel), rtol=0, atol=0)
    torch.testing.assert_close(restored[:, 1:2], restored[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(restored[:, 2:], method(rgb[:, 2:], kernel), rtol=0, atol=0)


def test_gamma_deconvolves_linear_light():
    sharp = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kernel = torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64)
    linear_blur = _mirror_blur_reference(sharp[0, 0].numpy() ** 2.2, (kernel / kernel.sum()).numpy())
    blurred = torch.from_numpy(linear_blur ** (1 / 2.2))[None, None]
    restored = wiener_deconvolution(blurred, kernel, nsr=1e-12, prior="identity", gamma=2.2)
    torch.testing.assert_close(restored[0, 0], sharp[0, 0], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Richardson-Lucy


@pytest.mark.parametrize("border", ["circular", "symmetric"])
def test_richardson_lucy_matches_skimage(border):
    # scikit-image convolves with zero padding; a dark band wider than iterations x kernel radius makes the
    # three border models agree, so the comparison is exact.
    image = np.zeros((40, 44))
    image[14:26, 14:30] = _random((12, 16), 4) + 0.1
    kernel = _random((5, 5), 5)
    kernel /= kernel.sum()
    expected = skimage_richardson_lucy(image, kernel, num_iter=5, clip=False)
    restored = richardson_lucy(
        _batch(image), torch.from_numpy(kernel), iterations=5, border=border, recenter=False, gamma=1.0
    )
    np.testing.assert_allclose(restored[0, 0].numpy(), expected, atol=1e-9)


def test_richardson_lucy_converges_towards_the_sharp_image():
    sharp = _random((24, 24), 6) * 0.8 + 0.1
    kernel = np.array([[0.2, 0.6, 0.2]])
    blurred = _mirror_blur_reference(sharp, kernel)
    errors = [
        np.abs(richardson_lucy(_batch(blurred), torch.from_numpy(kernel), iterations=n, gamma=1.0)[0, 0].numpy() - sharp)
        .mean()
        for n in (1, 5, 25)
    ]
    assert errors[0] > errors[1] > errors[2]


# --------------------------------------------------------------------------------------------------
# Unsharp mask and the Gaussian blur


def test_unsharp_mask_matches_skimage():
    image = _random((3, 21, 25), 7)
    expected = np.stack([skimage_unsharp_mask(channel, radius=1.7, amount=1.3) for channel in image])  # clipped
    restored = unsharp_mask(torch.from_numpy(image)[None], sigma=1.7, amount=1.3).clamp(0, 1)
    np.testing.assert_allclose(restored[0].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.6, 2.0, 5.0])  # 5.0: a radius of 20 pixels on a 9-pixel axis
def test_gaussian_blur_matches_scipy(sigma):
    image = _random((9, 30), 8)
    expected = ndimage.gaussian_filter(image, sigma, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur(_batch(image), sigma)[0, 0].numpy(), expected, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# On synthetic camera shake, with the true kernel


def test_classical_methods_improve_psnr_on_synthetic_global_blur():
    generator = torch.Generator().manual_seed(0)
    sharp = ndimage.gaussian_filter(torch.rand(2, 3, 96, 96, generator=generator).numpy(), (0, 0, 1.5, 1.5))
    sharp = torch.from_numpy((sharp - sharp.min()) / (sharp.max() - sharp.min())).float()
    pair = synthesize_global_blur(sharp, generator=1, length_range=(9, 15), gamma=1.0)
    blurred, kernel = pair["blur"], pair["kernel"]
    before = psnr(blurred, pair["sharp"]).item()
    for model in (WienerDeconvolution(), RichardsonLucy()):
        after = psnr(model(blurred, kernel).clamp(0, 1), pair["sharp"]).item()
        assert after > before + 3, (type(model).__name__, before, after)
    mild = gaussian_blur(pair["sharp"], 1.0)
    sharpened = UnsharpMask(sigma=1.0, amount=1.0)(mild).clamp(0, 1)
    assert psnr(sharpened, pair["sharp"]).item() > psnr(mild, pair["sharp"]).item() + 1


# --------------------------------------------------------------------------------------------------
# Errors and the registry


def test_kernel_errors_are_clear():
    image = torch.rand(1, 3, 8, 8)
    with pytest.raises(KernelError, match="WienerDeconvolution needs a blur kernel.*--kernel FILE"):
        WienerDeconvolution()(image)
    with pytest.raises(KernelError, match="RichardsonLucy needs a blur kernel"):
        RichardsonLucy()(image)
    with pytest.raises(KernelError, match="finite and non-negative"):
        wiener_deconvolution(image, -torch.ones(3, 3))
    with pytest.raises(KernelError, match="sums to 0"):
        richardson_lucy(image, torch.zeros(3, 3))
    with pytest.raises(KernelError, match="does not fit a 8x8 image with border='circular'"):
        wiener_deconvolution(image, torch.ones(9, 9), border="circular", recenter=False)
    with pytest.raises(ValueError, match="kernel must be"):
        wiener_deconvolution(image, torch.ones(2, 2, 3, 3))


def test_registered_classical_models():
    for name, cls, needs_kernel in [
        ("wiener", WienerDeconvolution, True),
        ("richardson-lucy", RichardsonLucy, True),
        ("unsharp-mask", UnsharpMask, False),
    ]:
        model = build_model(name)
        assert isinstance(model, cls) and model.needs_kernel is needs_kernel
        assert model.tileable is not needs_kernel and model.size_multiple == 1
        assert not list(model.parameters())
    assert build_model("wiener", nsr=0.1, prior="identity").nsr == 0.1
    assert build_model("richardson-lucy", iterations=7).iterations == 7
