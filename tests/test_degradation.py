"""Tests of the degradation model of issue 15: new kernel families, the camera pipeline
(adeblur.data.camera), the layered local-blur generator and rescaled content, against references:
Pillow's JPEG codec, plain-loop renderings, closed forms."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from adeblur.data.camera import boost_highlights, from_linear, jpeg_compress, jpeg_quantisation_tables, to_linear
from adeblur.data.synth import (
    KERNEL_FAMILIES,
    blur_with_kernels,
    dead_leaves,
    defocus_kernels,
    linear_kernels,
    random_kernels,
    random_walk_kernels,
    synthesize_global_blur,
    synthesize_layered_blur,
    synthesize_local_blur,
)
from adeblur.data.synthetic import SyntheticBlurDataset, with_kernel_canvas
from adeblur.errors import ConfigError
from adeblur.io import write_image
from adeblur.metrics import psnr


def support_size(kernel: torch.Tensor) -> int:
    rows = kernel.abs().sum(1).nonzero()
    cols = kernel.abs().sum(0).nonzero()
    return int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def centre_of_mass(kernel: torch.Tensor) -> tuple[float, float]:
    k = kernel.double()
    ys, xs = torch.arange(k.shape[0], dtype=torch.float64), torch.arange(k.shape[1], dtype=torch.float64)
    return float((k.sum(1) * ys).sum() / k.sum()), float((k.sum(0) * xs).sum() / k.sum())


def pillow_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """The reference codec: Pillow (libjpeg) at ``quality``, default 4:2:0 chroma for colour."""
    out = []
    for image in images:
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255
        out.append(torch.from_numpy(decoded.reshape(*decoded.shape[:2], -1)).permute(2, 0, 1))
    return torch.stack(out)


# --------------------------------------------------------------------------------------------------
# Camera pipeline


@pytest.mark.parametrize("quality", [1, 10, 37, 50, 75, 100])
def test_jpeg_tables_are_libjpegs(quality):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, "JPEG", quality=quality)
    tables = Image.open(io.BytesIO(buffer.getvalue())).quantization
    luma, chroma = jpeg_quantisation_tables(torch.tensor([float(quality)], dtype=torch.float64))
    assert luma[0].flatten().tolist() == list(tables[0])
    assert chroma[0].flatten().tolist() == list(tables[1])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("quality", [15, 50, 90])
def test_jpeg_matches_pillow(channels, quality):
    sharp = dead_leaves(2, 53, 70, generator=3)  # odd sizes: partial blocks and chroma cells
    images = synthesize_global_blur(sharp, generator=4, length_range=(3, 7))["blur"][:, :channels]
    ours, reference = jpeg_compress(images, quality), pillow_jpeg(images, quality)
    assert ours.shape == images.shape
    assert float(psnr(ours, reference)) > (50 if channels == 1 else 36)
    # Same distortion as the real codec, within a fraction of a dB.
    assert abs(float(psnr(ours, images)) - float(psnr(reference, images))) < 0.4
    # Decoded images are 8-bit levels.
    assert torch.equal(ours, torch.round(ours * 255) / 255)


def test_jpeg_per_image_quality_and_errors():
    images = dead_leaves(2, 32, 32, generator=0)
    both = jpeg_compress(images, torch.tensor([10.0, 95.0]))
    assert torch.equal(both[0], jpeg_compress(images[:1], 10)[0])
    assert torch.equal(both[1], jpeg_compress(images[1:], 95)[0])
    assert float(psnr(jpeg_compress(images[:1], 95), images[:1])) > float(psnr(both[:1], images[:1])) + 3
    with pytest.raises(ValueError, match="jpeg_compress"):
        jpeg_compress(torch.rand(1, 2, 8, 8), 50)
    with pytest.raises(ValueError, match=r"\(2,\) tensor"):
        jpeg_compress(images, torch.tensor([50.0, 50.0, 50.0]))


def test_response_curve_roundtrip_per_image():
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gamma = torch.tensor([1.0, 2.2, 2.6], dtype=torch.float64)
    linear = to_linear(images, gamma)
    assert torch.allclose(linear[1], images[1] ** 2.2)
    assert torch.allclose(from_linear(linear, gamma), images)
    assert float(from_linear(torch.full((1, 1, 1, 1), 3.0), 2.2)) == 1.0  # beyond white saturates


def test_highlights_boost_only_near_white():
    encoded = torch.tensor([0.2, 0.9, 0.95, 1.0]).view(1, 1, 1, 4)
    linear = to_linear(encoded, 2.2)
    boosted = boost_highlights(linear, encoded, 5.0, threshold=0.9)
    factor = (boosted / linear).flatten().tolist()
    assert factor == pytest.approx([1.0, 1.0, 3.0, 5.0])
    with pytest.raises(ValueError, match="gain"):
        boost_highlights(linear, encoded, 0.5)


def test_highlights_saturate_the_streaks_of_bright_spots():
    sharp = torch.full((1, 3, 33, 33), 0.3)
    sharp[..., 16, 16] = 1.0  # a lamp
    kernel = linear_kernels(torch.tensor([9.0]), torch.tensor([0.0]))
    plain = synthesize_global_blur(sharp, generator=0, kernels=kernel, quantize=False)
    bright = synthesize_global_blur(
        sharp, generator=0, kernels=kernel, quantize=False, highlight_probability=1.0, highlight_gain=40.0
    )
    assert float(plain["blur"].max()) < 0.7
    assert float(bright["blur"][0, 0, 16, 13:20].min()) == 1.0  # the whole streak clips
    assert torch.equal(bright["sharp"], plain["sharp"])  # the lamp was already white


# --------------------------------------------------------------------------------------------------
# Kernel families


def test_random_walk_kernels_are_normalised_centred_and_sized():
    kernels = random_walk_kernels(24, generator=0, length_range=(9, 41), thickness_range=(0, 0), dtype=torch.float64)
    assert kernels.shape[:2] == (24, 1) and kernels.shape[-1] % 2 == 1
    assert bool((kernels >= 0).all())
    assert torch.allclose(kernels.sum((-2, -1)), torch.ones(24, 1, dtype=torch.float64))
    centre = kernels.shape[-1] // 2
    for kernel in kernels[:, 0]:
        assert 9 <= support_size(kernel) <= 41
        y, x = centre_of_mass(kernel)
        assert abs(y - centre) < 1e-6 and abs(x - centre) < 1e-6


def test_random_walk_without_kicks_is_a_line_and_speed_changes_make_knots():
    straight = random_walk_kernels(
        8, generator=1, max_anxiety=0, max_speed_variation=0, max_dwells=0, thickness_range=(0, 0),
        length_range=(15, 25), dtype=torch.float64,
    )  # fmt: skip
    side = straight.shape[-1]
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).double()
    for kernel in straight[:, 0]:
        weights = kernel.flatten()
        points = coords.view(-1, 2)
        mean = (weights[:, None] * points).sum(0)
        centred = points - mean
        covariance = (weights[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
        smallest, largest = torch.linalg.eigvalsh(covariance).tolist()
        assert smallest < 0.3 and largest > 10  # a thin segment
    # Dwell points: a camera that nearly stops piles exposure on a few pixels.
    steady = random_walk_kernels(16, generator=2, max_speed_variation=0, max_dwells=0, thickness_range=(0, 0))
    dwelling = random_walk_kernels(16, generator=2, max_speed_variation=2, max_dwells=3, thickness_range=(0, 0))
    peak = lambda k: float((k.flatten(1).amax(1) / (k.flatten(1) > 0).float().mean(1).reciprocal()).mean())  # noqa: E731
    assert peak(dwelling) > 1.3 * peak(steady)


def test_random_walk_thickness_is_a_gaussian_blur():
    thin = random_walk_kernels(4, generator=3, thickness_range=(0, 0), size=61, length_range=(9, 15))
    thick = random_walk_kernels(4, generator=3, thickness_range=(1.0, 1.0), size=61, length_range=(9, 15))
    offsets = torch.arange(-3, 4, dtype=torch.float32)
    taps = torch.exp(-0.5 * offsets**2)
    taps = taps / taps.sum()
    reference = blur_with_kernels(thin, (taps[:, None] * taps[None])[None, None].expand(1, 1, 7, 7), border="zero")
    assert torch.allclose(thick, reference / reference.sum((-2, -1), keepdim=True), atol=1e-6)


def test_defocus_matches_a_supersampled_disc():
    kernel = defocus_kernels(1, generator=0, length_range=(7, 7), size=11, dtype=torch.float64)[0, 0]
    radius, samples = 3.5, 32
    reference = torch.zeros(11, 11, dtype=torch.float64)
    for row in range(11):
        for col in range(11):
            inside = 0
            for i in range(samples):
                for j in range(samples):
                    y = row - 5.5 + (i + 0.5) / samples
                    x = col - 5.5 + (j + 0.5) / samples
                    inside += (x * x + y * y) <= radius * radius
            reference[row, col] = inside
    reference /= reference.sum()
    assert float((kernel - reference).abs().max()) < 2e-3
    assert torch.equal(kernel, kernel.flip(0)) and torch.equal(kernel, kernel.T)


def test_random_kernels_mix_families_on_one_canvas():
    mixed = random_kernels(40, generator=0, families={f: 1.0 for f in KERNEL_FAMILIES}, length_range=(5, 21))
    assert mixed.shape == (40, 1, 2 * 21 - 1 + 6, 2 * 21 - 1 + 6)
    assert torch.allclose(mixed.sum((-2, -1)), torch.ones(40, 1), atol=1e-5)
    only_defocus = random_kernels(3, generator=0, families="defocus", length_range=(5, 21), size=47)
    assert torch.equal(only_defocus, only_defocus.flip(-1))  # discs are symmetric
    assert not torch.equal(mixed, random_kernels(40, generator=1, families={f: 1.0 for f in KERNEL_FAMILIES},
                                                 length_range=(5, 21)))  # fmt: skip
    with pytest.raises(ConfigError, match="kernel families"):
        random_kernels(2, generator=0, families={"gaussian": 1.0})
    with pytest.raises(ConfigError, match="kernel families"):
        random_kernels(2, generator=0, families={"linear": 0.0})


def test_global_blur_takes_families_kernel_files_and_the_camera_pipeline(tmp_path):
    sharp = dead_leaves(4, 48, 48, generator=0)
    out = synthesize_global_blur(sharp, generator=1, kernel_model={"random-walk": 1, "defocus": 1}, length_range=(3, 15))
    assert out["kernel"].shape[0] == 4 and bool((out["blur"] != out["sharp"]).any())
    kernel = np.zeros((5, 5), np.float32)
    kernel[2, :] = 1
    np.save(tmp_path / "box.npy", kernel)
    from_file = synthesize_global_blur(sharp, generator=1, kernels=str(tmp_path / "box.npy"), quantize=False)
    reference = from_linear(blur_with_kernels(to_linear(sharp), torch.from_numpy(kernel / 5)[None, None]))
    assert torch.allclose(from_file["blur"], reference, atol=1e-6)
    camera = dict(gamma=(1.8, 2.6), jpeg_quality=(30, 60), noise_sigma=0.01, highlight_probability=0.5)
    first = synthesize_global_blur(sharp, generator=2, kernel_model="random-walk", length_range=(3, 15), **camera)
    again = synthesize_global_blur(sharp, generator=2, kernel_model="random-walk", length_range=(3, 15), **camera)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert torch.equal(first["sharp"], torch.round(first["sharp"] * 255) / 255)
    with pytest.raises(ConfigError, match="kernel_model"):
        synthesize_global_blur(sharp, generator=0, kernel_model="gaussian")


def test_local_blur_with_jpeg_keeps_static_regions_identical():
    background = dead_leaves(3, 96, 96, generator=5)
    out = synthesize_local_blur(background, generator=6, num_objects=1, object_size=(0.1, 0.12),
                                max_displacement=6, jpeg_quality=40, gamma=(1.8, 2.6))  # fmt: skip
    # JPEG works on 16x16 macro-blocks (4:2:0): blocks away from the mask are coded identically.
    near_mask = torch.nn.functional.max_pool2d(out["mask"], 33, stride=1, padding=16) > 0
    difference = (out["blur"] - out["sharp"]).abs().amax(1, keepdim=True)
    assert float(difference[~near_mask].max()) == 0.0
    assert float(difference[out["mask"] > 0].mean()) > 0


# --------------------------------------------------------------------------------------------------
# The independent local generator


def test_layered_blur_is_the_average_of_shifted_composites():
    """Slow reference: a translating object, rendered at every tap of its path and averaged."""
    generator = torch.Generator().manual_seed(0)
    background = torch.rand(1, 3, 40, 40, generator=generator, dtype=torch.float64)
    source = torch.rand(1, 3, 40, 40, generator=generator, dtype=torch.float64)
    kernel = torch.zeros(7, 7, dtype=torch.float64)
    kernel[3, 1:6] = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0])  # uneven speed along a line
    kernel[1, 5] = 2.0  # and a jump
    out = synthesize_layered_blur(background, generator=1, kernels=[kernel], object_source=source, num_objects=1,
                                  kernel_scale=(1, 1), gamma=1.0, quantize=False)  # fmt: skip
    # Recover the object (alpha, colour) from the sharp frame: re-run the blob draw with the same seed.
    from adeblur.data.synth import _blob_layers

    replay = torch.Generator().manual_seed(1)
    torch.randint(1, 2, (1,), generator=replay)  # the object count draw
    colors, alphas = _blob_layers(source, 1, (0.1, 0.3), replay, torch.float64)
    alpha, color = alphas[:, 0], colors[:, 0]
    weights = kernel / kernel.sum()
    total = torch.zeros_like(background)
    for i in range(7):
        for j in range(7):
            if weights[i, j] == 0:
                continue
            dy, dx = i - 3, j - 3  # convolution: mass at (i, j) moves the image by (i - c, j - c)
            a = torch.roll(alpha, (dy, dx), (-2, -1))
            c = torch.roll(color, (dy, dx), (-2, -1))
            total += weights[i, j] * (a * c + (1 - a) * background)
    interior = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the roll's wrap-around
    assert torch.allclose(out["blur"][interior], total[interior], atol=1e-9)
    assert torch.allclose(out["sharp"], alpha * color + (1 - alpha) * background)
    assert bool(out["mask"].any()) and bool((out["mask"] == 0).any())


def test_layered_blur_with_a_delta_kernel_changes_nothing():
    background = dead_leaves(2, 32, 32, generator=0)
    delta = torch.ones(1, 1)
    out = synthesize_layered_blur(background, generator=0, kernels=[delta], kernel_scale=(1, 1))
    assert torch.equal(out["blur"], out["sharp"])


# --------------------------------------------------------------------------------------------------
# Content at random scales


def test_scale_range_cuts_a_wider_window(tmp_path):
    ramp = torch.linspace(0, 1, 256).view(1, 1, 256).expand(3, 256, 256).contiguous()
    write_image(tmp_path / "ramp.png", ramp)
    plain = SyntheticBlurDataset(tmp_path, kind="global", patch_size=64, blur=False)
    halved = SyntheticBlurDataset(tmp_path, kind="global", patch_size=64, blur=False, scale_range=(0.5, 0.5))
    slope = lambda patch: float(patch[0, 32, 48] - patch[0, 32, 16]) / 32  # noqa: E731
    assert slope(plain[0]["sharp"]) == pytest.approx(1 / 255, rel=0.05)
    assert slope(halved[0]["sharp"]) == pytest.approx(2 / 255, rel=0.05)
    assert halved[0]["sharp"].shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="scale_range"):
        SyntheticBlurDataset(tmp_path, patch_size=64, scale_range=(0.5, 1.5))


def test_kernel_canvas_leaves_room_for_thickened_kernels():
    options = with_kernel_canvas({"kernel_model": {"random-walk": 3, "linear": 1}, "length_range": [3, 45]})
    assert options["kernel_size"] == 2 * 45 - 1 + 6
    sharp = dead_leaves(2, 32, 32, generator=0)
    out = synthesize_global_blur(sharp, generator=0, **options)
    assert out["kernel"].shape[-1] == options["kernel_size"]
    assert math.isclose(float(out["kernel"].sum()), 2.0, rel_tol=1e-5)
