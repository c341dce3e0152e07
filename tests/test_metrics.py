"""Tests of adeblur.metrics against scikit-image and slow, obviously-correct references."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import torch
from skimage.color import rgb2gray
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from adeblur.errors import MetricError
from adeblur.metrics import PSNR, SSIM, psnr, rgb_to_y, ssim, ssim_map, weighted_psnr, weighted_ssim

HEIGHT, WIDTH = 40, 56
TOLERANCE = 1e-4
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PHOTOS = ["astronaut", "coffee", "chelsea"]
DEGRADATIONS = ["noisy", "blurred", "blurred_noisy", "darker"]


def skimage_ssim(prediction: np.ndarray, target: np.ndarray, full: bool = False):
    """The oracle: (C, H, W) float64 arrays, Wang et al. settings."""
    return structural_similarity(
        prediction,
        target,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=0,
        full=full,
    )


@functools.cache
def photo(name: str) -> np.ndarray:
    """A small (3, H, W) float64 version of a scikit-image sample photo."""
    image = getattr(skimage.data, name)()
    return np.ascontiguousarray(resize(image, (HEIGHT, WIDTH), anti_aliasing=True).transpose(2, 0, 1))


@functools.cache
def degraded(name: str, degradation: str) -> np.ndarray:
    """``photo(name)`` with noise and/or blur, clipped to [0, 1]; seeded."""
    image = photo(name)
    rng = np.random.default_rng(sum(map(ord, name + degradation)))
    if "blurred" in degradation:
        image = scipy.ndimage.gaussian_filter(image, sigma=(0, 1.2, 1.2))
    if "noisy" in degradation:
        image = image + rng.normal(0, 0.05, image.shape)
    if degradation == "darker":
        image = 0.8 * image + 0.02
    return np.clip(image, 0, 1)


def random_mask(height: int, width: int, seed: int) -> np.ndarray:
    """A blob-like (1, H, W) {0, 1} mask with some pixels set."""
    rng = np.random.default_rng(seed)
    field = scipy.ndimage.gaussian_filter(rng.normal(size=(height, width)), 4)
    return (field > np.quantile(field, 0.6)).astype(np.float64)[None]


def tensor(array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


# ---------------------------------------------------------------------------- agreement with skimage


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("degradation", DEGRADATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rgb_matches_skimage(name: str, degradation: str, dtype: torch.dtype) -> None:
    target, prediction = photo(name), degraded(name, degradation)
    ours_ssim = ssim(tensor(prediction, dtype), tensor(target, dtype)).item()
    ours_psnr = psnr(tensor(prediction, dtype), tensor(target, dtype)).item()
    assert ours_ssim == pytest.approx(skimage_ssim(prediction, target), abs=TOLERANCE)
    assert ours_psnr == pytest.approx(peak_signal_noise_ratio(target, prediction, data_range=1.0), abs=TOLERANCE)


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_grey_matches_skimage(name: str, degradation: str) -> None:
    target = rgb2gray(photo(name).transpose(1, 2, 0))[None]
    prediction = rgb2gray(degraded(name, degradation).transpose(1, 2, 0))[None]
    assert ssim(tensor(prediction), tensor(target)).item() == pytest.approx(
        skimage_ssim(prediction, target), abs=TOLERANCE
    )
    assert psnr(tensor(prediction), tensor(target)).item() == pytest.approx(
        peak_signal_noise_ratio(target, prediction, data_range=1.0), abs=TOLERANCE
    )


def test_ssim_map_is_skimage_full_map_without_border() -> None:
    target, prediction = photo("coffee"), degraded("coffee", "blurred_noisy")
    _, full_map = skimage_ssim(prediction, target, full=True)
    ours = ssim_map(tensor(prediction, torch.float64), tensor(target, torch.float64))
    assert ours.shape == (3, HEIGHT - 10, WIDTH - 10)
    np.testing.assert_allclose(ours.numpy(), full_map[:, 5:-5, 5:-5], atol=1e-10)


# ---------------------------------------------------------------------------- batching, reduction


def test_batched_equals_per_image() -> None:
    targets = [photo(name) for name in PHOTOS]
    predictions = [degraded(name, "blurred_noisy") for name in PHOTOS]
    masks = [random_mask(HEIGHT, WIDTH, seed) for seed in range(3)]
    batch_target, batch_prediction = tensor(np.stack(targets)), tensor(np.stack(predictions))
    batch_mask = tensor(np.stack(masks))
    for metric in (psnr, ssim):
        for mask, per_mask in ((None, [None] * 3), (batch_mask, [tensor(m) for m in masks])):
            batched = metric(batch_prediction, batch_target, mask=mask, reduction="none")
            singles = torch.stack(
                [metric(tensor(p), tensor(t), mask=m) for p, t, m in zip(predictions, targets, per_mask)]
            )
            assert batched.shape == (3,)
            torch.testing.assert_close(batched, singles)
            torch.testing.assert_close(metric(batch_prediction, batch_target, mask=mask), singles.mean())


def test_unbatched_input_gives_a_scalar_for_any_reduction() -> None:
    image = tensor(photo("chelsea"))
    for reduction in ("mean", "none"):
        assert psnr(image * 0.9, image, reduction=reduction).shape == ()
        assert ssim(image * 0.9, image, reduction=reduction).shape == ()


def test_shared_mask_is_broadcast_over_the_batch() -> None:
    target = tensor(np.stack([photo(name) for name in PHOTOS]))
    prediction = tensor(np.stack([degraded(name, "noisy") for name in PHOTOS]))
    mask = tensor(random_mask(HEIGHT, WIDTH, 7))
    for metric in (psnr, ssim):
        shared = metric(prediction, target, mask=mask, reduction="none")
        repeated = metric(prediction, target, mask=mask.expand(3, 1, HEIGHT, WIDTH), reduction="none")
        torch.testing.assert_close(shared, repeated)


# ---------------------------------------------------------------------------- special values, errors


def test_identical_images_give_inf_psnr_and_unit_ssim() -> None:
    image = tensor(photo("astronaut"))
    assert psnr(image, image).item() == float("inf")
    batch = torch.stack([image, image])
    values = psnr(batch, batch.clone(), reduction="none")
    assert torch.isposinf(values).all()
    mask = torch.ones(1, HEIGHT, WIDTH)
    assert torch.isposinf(weighted_psnr(batch, batch, mask, reduction="none")).all()
    assert ssim(image, image).item() == pytest.approx(1.0, abs=1e-6)


def test_empty_mask_is_an_error_naming_the_image() -> None:
    image = tensor(photo("coffee"))
    batch = torch.stack([image, image])
    mask = torch.ones(2, 1, HEIGHT, WIDTH)
    mask[1] = 0
    for metric in (psnr, ssim):
        with pytest.raises(MetricError, match=r"image\(s\) \[1\] is empty"):
            metric(batch * 0.9, batch, mask=mask)
        with pytest.raises(MetricError, match="empty"):
            metric(image * 0.9, image, mask=torch.zeros(1, HEIGHT, WIDTH))


def test_mask_only_in_the_ssim_border_is_an_error_for_ssim_only() -> None:
    image = tensor(photo("coffee"))
    border_mask = torch.zeros(1, HEIGHT, WIDTH)
    border_mask[:, :5] = 1
    assert torch.isfinite(weighted_psnr(image * 0.9, image, border_mask))
    with pytest.raises(MetricError, match="5-pixel border"):
        weighted_ssim(image * 0.9, image, border_mask)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_bad_inputs_raise_clear_errors(metric) -> None:
    image = tensor(photo("chelsea"))
    with pytest.raises(MetricError, match="does not match target shape"):
        metric(image, image[:, :-1])
    with pytest.raises(MetricError, match=r"mask shape \(1, 39, 56\)"):
        metric(image, image, mask=torch.ones(1, HEIGHT - 1, WIDTH))
    with pytest.raises(MetricError, match="mask shape"):
        pair = image[None].expand(2, -1, -1, -1)
        metric(pair, pair, mask=torch.ones(3, 1, HEIGHT, WIDTH))
    with pytest.raises(MetricError, match="mask shape"):
        metric(image, image, mask=torch.ones(3, HEIGHT, WIDTH))
    with pytest.raises(MetricError, match=r"\(C, H, W\) or \(B, C, H, W\)"):
        metric(image[0], image[0])
    with pytest.raises(MetricError, match="3 channels"):
        metric(image[:1], image[:1], y_channel=True)
    with pytest.raises(MetricError, match="crop_border"):
        metric(image, image, crop_border=HEIGHT // 2)
    with pytest.raises(MetricError, match="crop_border"):
        metric(image, image, crop_border=-1)
    with pytest.raises(ValueError, match="reduction"):
        metric(image, image, reduction="sum")
    with pytest.raises(TypeError, match="floating-point"):
        metric((image * 255).to(torch.uint8), (image * 255).to(torch.uint8))


def test_ssim_on_too_small_images_is_an_error() -> None:
    with pytest.raises(MetricError, match="at least 11x11"):
        ssim(torch.rand(3, 10, 32), torch.rand(3, 10, 32))
    with pytest.raises(MetricError, match="at least 11x11"):
        ssim(torch.rand(3, 16, 16), torch.rand(3, 16, 16), crop_border=3)


# ---------------------------------------------------------------------------- weighted metrics


def test_all_ones_mask_gives_the_plain_metrics() -> None:
    target = tensor(np.stack([photo(name) for name in PHOTOS]))
    prediction = tensor(np.stack([degraded(name, "blurred") for name in PHOTOS]))
    ones = torch.ones(3, 1, HEIGHT, WIDTH)
    for plain, weighted in ((psnr, weighted_psnr), (ssim, weighted_ssim)):
        torch.testing.assert_close(
            weighted(prediction, target, ones, reduction="none"), plain(prediction, target, reduction="none")
        )


def test_weighted_psnr_matches_slow_reference() -> None:
    for seed, name in enumerate(PHOTOS):
        target, prediction = photo(name), degraded(name, "blurred_noisy")
        mask = random_mask(HEIGHT, WIDTH, seed)
        squared_errors = []  # every channel value of every masked pixel, one by one
        for row in range(HEIGHT):
            for column in range(WIDTH):
                if mask[0, row, column] == 1:
                    for channel in range(3):
                        squared_errors.append((prediction[channel, row, column] - target[channel, row, column]) ** 2)
        expected = 10 * np.log10(1.0 / np.mean(squared_errors))
        ours = weighted_psnr(tensor(prediction), tensor(target), tensor(mask)).item()
        assert ours == pytest.approx(expected, abs=TOLERANCE)


def test_weighted_ssim_matches_masked_skimage_map() -> None:
    for seed, name in enumerate(PHOTOS):
        target, prediction = photo(name), degraded(name, "blurred_noisy")
        mask = random_mask(HEIGHT, WIDTH, seed)
        _, full_map = skimage_ssim(prediction, target, full=True)
        # Border convention: both the map and the mask lose the 5 pixels where the window does not fit.
        interior_map, interior_mask = full_map[:, 5:-5, 5:-5], mask[:, 5:-5, 5:-5]
        expected = (interior_map * interior_mask).sum() / (interior_mask.sum() * 3)
        ours = weighted_ssim(tensor(prediction), tensor(target), tensor(mask)).item()
        assert ours == pytest.approx(expected, abs=TOLERANCE)


def test_mask_is_binarised_and_may_be_boolean() -> None:
    target, prediction = tensor(photo("astronaut")), tensor(degraded("astronaut", "noisy"))
    binary = tensor(random_mask(HEIGHT, WIDTH, 3))
    soft = binary * torch.linspace(0.05, 1.0, WIDTH)  # same support, other weights
    for metric in (weighted_psnr, weighted_ssim):
        expected = metric(prediction, target, binary)
        torch.testing.assert_close(metric(prediction, target, soft), expected)
        torch.testing.assert_close(metric(prediction, target, binary.bool()), expected)


def test_weighted_metrics_only_see_the_masked_region() -> None:
    target = tensor(photo("coffee"))
    mask = torch.zeros(1, HEIGHT, WIDTH)
    mask[:, :, : WIDTH // 2] = 1
    prediction = target.clone()
    prediction[:, :, WIDTH // 2 :] = 1 - prediction[:, :, WIDTH // 2 :]  # damage outside the mask only
    assert weighted_psnr(prediction, target, mask).item() == float("inf")
    prediction[:, :, : WIDTH // 2] += 0.01  # now also inside
    assert weighted_psnr(prediction, target, mask).item() == pytest.approx(40.0, abs=1e-3)


# ---------------------------------------------------------------------------- Y channel, crop, range


def test_rgb_to_y_known_values() -> None:
    colours = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    luma = rgb_to_y(colours.T.reshape(3, 5, 1)).flatten() * 255
    expected = torch.tensor([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966])
    torch.testing.assert_close(luma, expected)


def test_y_channel_matches_hand_computed_reference() -> None:
    for name in PHOTOS:
        target, prediction = photo(name), degraded(name, "blurred_noisy")

        def luma(rgb: np.ndarray) -> np.ndarray:
            red, green, blue = rgb
            return ((16.0 + 65.481 * red + 128.553 * green + 24.966 * blue) / 255.0)[None]

        expected_psnr = peak_signal_noise_ratio(luma(target), luma(prediction), data_range=1.0)
        expected_ssim = skimage_ssim(luma(prediction), luma(target))
        assert psnr(tensor(prediction), tensor(target), y_channel=True).item() == pytest.approx(
            expected_psnr, abs=TOLERANCE
        )
        assert ssim(tensor(prediction), tensor(target), y_channel=True).item() == pytest.approx(
            expected_ssim, abs=TOLERANCE
        )


def test_crop_border_equals_scoring_the_cropped_images() -> None:
    target, prediction = tensor(photo("chelsea")), tensor(degraded("chelsea", "noisy"))
    mask = tensor(random_mask(HEIGHT, WIDTH, 5))
    border = 4
    cropped = (slice(None), slice(border, -border), slice(border, -border))
    for metric in (psnr, ssim):
        for kwargs in ({}, {"y_channel": True}):
            torch.testing.assert_close(
                metric(prediction, target, crop_border=border, mask=mask, **kwargs),
                metric(prediction[cropped], target[cropped], mask=mask[cropped], **kwargs),
            )


def test_data_range_scales_like_8_bit_images() -> None:
    target, prediction = tensor(photo("coffee"), torch.float64), tensor(degraded("coffee", "noisy"), torch.float64)
    mask = tensor(random_mask(HEIGHT, WIDTH, 2), torch.float64)
    for metric in (psnr, ssim):
        for kwargs in ({}, {"y_channel": True}, {"mask": mask}):
            torch.testing.assert_close(
                metric(prediction * 255, target * 255, data_range=255.0, **kwargs), metric(prediction, target, **kwargs)
            )


# ---------------------------------------------------------------------------- autograd, devices, modules


def test_ssim_gradcheck_float64() -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 2, 13, 14, generator=generator, dtype=torch.float64)
    prediction = (target + 0.1 * torch.rand(2, 2, 13, 14, generator=generator, dtype=torch.float64)).requires_grad_()
    mask = (torch.rand(2, 1, 13, 14, generator=generator) > 0.5).double()
    mask[:, :, 6, 6] = 1  # never empty in the interior
    assert torch.autograd.gradcheck(lambda x: ssim(x, target), (prediction,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: ssim(x, target, mask=mask, reduction="none"), (prediction,), fast_mode=True)
    colour_target = torch.rand(1, 3, 12, 12, generator=generator, dtype=torch.float64)
    colour_prediction = colour_target.flip(-1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ssim(x, colour_target, y_channel=True), (colour_prediction,), fast_mode=True)


def test_ssim_loss_backward_after_a_call_in_inference_mode() -> None:
    target = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.inference_mode():
        ssim(target, target)  # may fill the window cache with an inference tensor
    prediction = torch.zeros_like(target, requires_grad=True)
    (1 - ssim(prediction, target)).backward()
    assert prediction.grad is not None and torch.isfinite(prediction.grad).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_devices_and_dtypes(device: str, dtype: torch.dtype) -> None:
    target = tensor(np.stack([photo(name) for name in PHOTOS]), torch.float64)
    prediction = tensor(np.stack([degraded(name, "blurred_noisy") for name in PHOTOS]), torch.float64)
    mask = tensor(np.stack([random_mask(HEIGHT, WIDTH, seed) for seed in range(3)]), torch.float64)
    for metric in (psnr, ssim):
        for kwargs in ({}, {"mask": mask.to(device)}, {"y_channel": True}):
            reference = metric(prediction, target, reduction="none", **kwargs)
            ours = metric(prediction.to(device, dtype), target.to(device, dtype), reduction="none", **kwargs)
            assert ours.device.type == device and ours.dtype == dtype
            torch.testing.assert_close(ours.cpu().double(), reference, atol=TOLERANCE, rtol=0)


def test_mixed_dtypes_are_promoted() -> None:
    image = tensor(photo("astronaut"))
    assert ssim(image.double(), image * 0.9).dtype == torch.float64


def test_modules_match_functions() -> None:
    target = tensor(np.stack([photo(name) for name in PHOTOS]))
    prediction = tensor(np.stack([degraded(name, "noisy") for name in PHOTOS]))
    mask = tensor(random_mask(HEIGHT, WIDTH, 9))
    options = {"crop_border": 2, "y_channel": True, "reduction": "none"}
    for module, function in ((PSNR(**options), psnr), (SSIM(**options), ssim)):
        assert "y_channel=True" in repr(module)
        torch.testing.assert_close(module(prediction, target), function(prediction, target, **options))
        torch.testing.assert_close(
            module(prediction, target, mask), function(prediction, target, mask=mask, **options)
        )
