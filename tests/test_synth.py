"""Tests of adeblur.data.synth and adeblur.data.synthetic against slow, obviously-correct references."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from adeblur.data.synth import (
    BORDERS,
    _paint_disks,
    add_noise,
    blur_with_kernels,
    center_kernel,
    composite_moving_layers,
    dead_leaves,
    linear_kernel,
    linear_kernels,
    load_kernel,
    load_kernels,
    quantize_8bit,
    random_linear_kernels,
    synthesize_global_blur,
    synthesize_local_blur,
    trajectory_kernels,
)
from adeblur.data.synthetic import SyntheticBlurDataset, synthesize_batch
from adeblur.errors import ConfigError, DatasetError, KernelError

SHARED_KERNELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kernels"


def support_size(kernel: torch.Tensor) -> int:
    """Larger side of the box around the non-zero pixels of a (K, K) kernel."""
    rows = kernel.abs().sum(1).nonzero()
    cols = kernel.abs().sum(0).nonzero()
    return int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def pixel_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates, float64 (H, W)."""
    rows, cols = torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)
    ys, xs = torch.meshgrid(rows, cols, indexing="ij")
    return ys, xs


def centre_of_mass(kernel: torch.Tensor) -> tuple[float, float]:
    k = kernel.double()
    ys = torch.arange(k.shape[0], dtype=torch.float64)
    xs = torch.arange(k.shape[1], dtype=torch.float64)
    return float((k.sum(1) * ys).sum() / k.sum()), float((k.sum(0) * xs).sum() / k.sum())


# --------------------------------------------------------------------------------------------------
# Dead leaves


def test_dead_leaves_range_variety_and_determinism():
    a = dead_leaves(3, 48, 40, generator=5)
    assert a.shape == (3, 3, 48, 40) and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, dead_leaves(3, 48, 40, generator=5))
    assert not torch.equal(a, dead_leaves(3, 48, 40, generator=6))
    assert not torch.equal(a[0], a[1])
    for image in a:  # many regions, not flat
        assert float(image.std()) > 0.1
        assert torch.unique((image * 255).round().view(3, -1), dim=1).shape[1] > 200
    grey = dead_leaves(1, 16, 16, generator=torch.Generator().manual_seed(0), channels=1, dtype=torch.float64)
    assert grey.shape == (1, 1, 16, 16) and grey.dtype == torch.float64


def test_dead_leaves_piecewise_constant_without_ramp_and_lens():
    image = dead_leaves(1, 32, 32, generator=0, gradient=0.0, lens_sigma=0.0, num_shapes=20)
    colours = torch.unique(image.view(3, -1), dim=1)
    assert colours.shape[1] <= 21  # 20 disks + the background


def test_paint_disks_matches_brute_force():
    generator = torch.Generator().manual_seed(1)
    batch, height, width, shapes = 2, 23, 37, 60
    radius = 0.3 + 30 * torch.rand(batch, shapes, generator=generator, dtype=torch.float64) ** 3
    centre_x = torch.rand(batch, shapes, generator=generator, dtype=torch.float64) * (width + 10) - 5
    centre_y = torch.rand(batch, shapes, generator=generator, dtype=torch.float64) * (height + 10) - 5
    label = torch.zeros(batch * height * width, dtype=torch.long)
    _paint_disks(label, (batch, height, width), centre_x, centre_y, radius)

    ys, xs = pixel_grid(height, width)
    expected = torch.zeros(batch, height, width, dtype=torch.long)
    for b in range(batch):
        for m in range(shapes):  # later disks are in front
            inside = (xs - centre_x[b, m]) ** 2 + (ys - centre_y[b, m]) ** 2 <= radius[b, m] ** 2
            expected[b][inside] = m + 1
    assert torch.equal(label.view(batch, height, width), expected)


# --------------------------------------------------------------------------------------------------
# Kernels


def test_trajectory_kernels_are_normalised_centred_and_within_length_range():
    kernels = trajectory_kernels(48, generator=3)
    assert kernels.shape[:2] == (48, 1) and kernels.shape[-1] % 2 == 1
    assert float(kernels.min()) >= 0
    assert torch.allclose(kernels.sum((-2, -1)), torch.ones(48, 1), atol=1e-5)
    centre = kernels.shape[-1] // 2
    supports = [support_size(k[0]) for k in kernels]
    assert min(supports) >= 7 and max(supports) <= 65
    assert max(supports) - min(supports) > 30  # spread over the range
    for k in kernels:
        cy, cx = centre_of_mass(k[0])
        assert abs(cy - centre) < 1e-3 and abs(cx - centre) < 1e-3
    small = trajectory_kernels(16, generator=4, length_range=(3, 9), size=17, dtype=torch.float64)
    assert small.shape == (16, 1, 17, 17) and small.dtype == torch.float64
    assert all(3 <= support_size(k[0]) <= 9 for k in small)


def test_trajectory_kernels_determinism_and_errors():
    assert torch.equal(trajectory_kernels(4, generator=1), trajectory_kernels(4, generator=1))
    assert not torch.equal(trajectory_kernels(4, generator=1, size=131), trajectory_kernels(4, generator=2, size=131))
    with pytest.raises(KernelError, match="size"):
        trajectory_kernels(4, generator=1, length_range=(30, 31), size=9)
    with pytest.raises(KernelError):
        trajectory_kernels(4, generator=1, length_range=(0.5, 3))


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 90.0, 135.0, 160.0])
def test_linear_kernel_principal_axis_matches_angle(angle):
    kernel = linear_kernel(21, angle)[0].double()
    assert kernel.shape[0] % 2 == 1 and float(kernel.min()) >= 0
    assert math.isclose(float(kernel.sum()), 1.0, abs_tol=1e-6)
    cy, cx = centre_of_mass(kernel)
    centre = kernel.shape[0] // 2
    assert abs(cy - centre) < 1e-6 and abs(cx - centre) < 1e-6
    ys, xs = torch.meshgrid(torch.arange(kernel.shape[0]) - cy, torch.arange(kernel.shape[1]) - cx, indexing="ij")
    cov = torch.tensor(
        [[(kernel * xs * xs).sum(), (kernel * xs * ys).sum()], [(kernel * xs * ys).sum(), (kernel * ys * ys).sum()]]
    )
    vx, vy = torch.linalg.eigh(cov).eigenvectors[:, 1].tolist()  # axis of the largest eigenvalue
    measured = math.degrees(math.atan2(-vy, vx)) % 180  # y points down: counter-clockwise on screen
    assert min(abs(measured - angle), 180 - abs(measured - angle)) < 0.5


def test_linear_kernel_orientation_and_box_profile():
    k45 = linear_kernel(9, 45)[0]
    c = k45.shape[0] // 2
    assert k45[c - 3, c + 3] > 0 and k45[c + 3, c - 3] > 0  # up-right and down-left
    assert k45[c - 3, c - 3] == 0 and k45[c + 3, c + 3] == 0
    horizontal = linear_kernel(7, 0)[0]
    row = horizontal[horizontal.shape[0] // 2]
    # A 7-px box convolved with the bilinear tent: interior 1/7, ends 0.875/7 and 0.125/7.
    expected = torch.tensor([0.125, 0.875, 1, 1, 1, 1, 1, 0.875, 0.125]) / 7
    assert torch.allclose(row, expected, atol=2e-3)
    assert float(horizontal.sum()) == pytest.approx(1.0)
    delta = linear_kernel(0, 10)[0]
    assert delta.shape == (3, 3) and float(delta[1, 1]) == pytest.approx(1.0)
    batch = linear_kernels(torch.tensor([5.0, 11.0]), torch.tensor([90.0, 0.0]))
    assert batch.shape == (2, 1, 13, 13)


def test_random_linear_kernels_support():
    kernels = random_linear_kernels(40, generator=0, length_range=(7, 33))
    assert all(7 <= support_size(k[0]) <= 33 for k in kernels)
    assert torch.allclose(kernels.sum((-2, -1)), torch.ones(40, 1), atol=1e-5)


def test_center_kernel_moves_the_centre_of_mass_to_the_middle():
    kernel = torch.zeros(5, 9)
    kernel[1, 6], kernel[3, 8] = 3.0, 1.0
    centred = center_kernel(kernel)
    assert centred.shape[0] == centred.shape[1] and centred.shape[0] % 2 == 1
    assert float(centred.sum()) == 4.0
    cy, cx = centre_of_mass(centred)
    middle = centred.shape[0] // 2
    assert abs(cy - middle) <= 0.5 and abs(cx - middle) <= 0.5
    with pytest.raises(KernelError):
        center_kernel(kernel, size=2)


# --------------------------------------------------------------------------------------------------
# Convolution

SCIPY_MODE = {"reflect": "mirror", "replicate": "nearest", "circular": "wrap", "zero": "constant"}
NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap", "zero": "constant"}


def slow_convolution(image: np.ndarray, kernel: np.ndarray, border: str) -> np.ndarray:
    """out[y, x] = sum_ij k[i, j] img[y - (i - ci), x - (j - cj)], ci = Kh // 2, by explicit loops."""
    kh, kw = kernel.shape
    ci, cj = kh // 2, kw // 2
    pad = max(kh, kw)
    extended = np.pad(image, pad, mode=NUMPY_MODE[border])
    out = np.zeros_like(image)
    for i in range(kh):
        for j in range(kw):
            dy, dx = i - ci, j - cj
            out += kernel[i, j] * extended[pad - dy : pad - dy + image.shape[0], pad - dx : pad - dx + image.shape[1]]
    return out


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_blur_with_kernels_matches_scipy_convolve(border, method):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 13, 17, generator=generator, dtype=torch.float64)
    kernels = torch.rand(2, 1, 5, 7, generator=generator, dtype=torch.float64)  # asymmetric: the flip matters
    out = blur_with_kernels(images, kernels, border=border, method=method)
    assert out.shape == images.shape and out.dtype == torch.float64
    for b in range(2):
        for c in range(3):
            expected = scipy.ndimage.convolve(images[b, c].numpy(), kernels[b, 0].numpy(), mode=SCIPY_MODE[border])
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("border", BORDERS)
def test_blur_with_kernels_even_and_oversized_kernels(border):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(1, 1, 6, 5, generator=generator, dtype=torch.float64)
    for shape in [(4, 6), (15, 13)]:  # even sizes; larger than the image (repeated reflection)
        kernel = torch.rand(1, 1, *shape, generator=generator, dtype=torch.float64)
        expected = slow_convolution(images[0, 0].numpy(), kernel[0, 0].numpy(), border)
        for method in ("direct", "fft"):
            out = blur_with_kernels(images, kernel, border=border, method=method)
            np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-10)


def test_blur_with_kernels_shared_kernel_float32_and_shift_direction():
    images = torch.rand(3, 2, 20, 20)
    kernel = trajectory_kernels(1, generator=0, length_range=(9, 15))
    shared = blur_with_kernels(images, kernel)
    one_by_one = torch.cat([blur_with_kernels(images[i : i + 1], kernel) for i in range(3)])
    assert torch.allclose(shared, one_by_one, atol=1e-6)
    by_fft = blur_with_kernels(images, kernel, method="fft")
    assert torch.allclose(by_fft, blur_with_kernels(images, kernel, method="direct"), atol=1e-5)
    dot = torch.zeros(1, 1, 9, 9)
    dot[0, 0, 4, 4] = 1
    down_left = torch.zeros(1, 1, 3, 3)
    down_left[0, 0, 2, 0] = 1  # mass below-left of the centre
    moved = blur_with_kernels(dot, down_left)
    assert moved[0, 0, 5, 3] == 1 and moved.sum() == 1
    with pytest.raises(ValueError):
        blur_with_kernels(images, torch.rand(2, 1, 3, 3))


# --------------------------------------------------------------------------------------------------
# Kernel files


def write_mat73(path: Path, variables: dict) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5, arrays transposed, cells as object references."""
    with h5py.File(path, "w") as file:
        refs = file.create_group("#refs#")
        for name, value in variables.items():
            if isinstance(value, str):  # a char array: uint16 codes
                dataset = file.create_dataset(name, data=np.array([[ord(c)] for c in value], dtype=np.uint16))
                dataset.attrs["MATLAB_class"] = np.bytes_("char")
            elif isinstance(value, list):  # a 1xN cell array
                references = []
                for number, array in enumerate(value):
                    dataset = refs.create_dataset(f"r{name}{number}", data=np.asarray(array).T)
                    dataset.attrs["MATLAB_class"] = np.bytes_("double")
                    references.append(dataset.ref)
                cell = file.create_dataset(name, data=np.array(references, dtype=h5py.ref_dtype).reshape(len(value), 1))
                cell.attrs["MATLAB_class"] = np.bytes_("cell")
            else:
                dataset = file.create_dataset(name, data=np.asarray(value).T)
                dataset.attrs["MATLAB_class"] = np.bytes_("double")


def test_load_kernels_from_each_file_type(tmp_path):
    rng = np.random.default_rng(0)
    asymmetric = rng.random((5, 7))
    asymmetric[0, 0] = 3.0  # orientation marker
    expected = asymmetric / asymmetric.sum()

    np.save(tmp_path / "one.npy", asymmetric)
    np.save(tmp_path / "stack.npy", np.stack([asymmetric, 2 * asymmetric, asymmetric[::-1]]))
    scipy.io.savemat(tmp_path / "v5.mat", {"kernel": asymmetric, "image": rng.random((9, 9))})
    scipy.io.savemat(tmp_path / "v5_stack.mat", {"kernels": np.dstack([asymmetric, asymmetric])})
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = asymmetric, np.ones((3, 3))
    scipy.io.savemat(tmp_path / "v5_cell.mat", {"psfs": cell, "n": 2.0})
    write_mat73(tmp_path / "v73.mat", {"kernels": [asymmetric, np.ones((3, 4))], "other": rng.random((4, 4))})
    write_mat73(tmp_path / "v73_plain.mat", {"k": asymmetric, "label": "not a kernel"})
    grey = Image.fromarray((expected / expected.max() * 255).round().astype(np.uint8))
    grey.save(tmp_path / "grey.png")
    Image.merge("RGB", [grey, grey, grey]).save(tmp_path / "rgb.png")

    def check(kernel, reference=expected, atol=1e-6):
        assert kernel.dtype == torch.float32 and float(kernel.min()) >= 0
        assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(kernel.numpy(), reference, atol=atol)

    check(load_kernel(tmp_path / "one.npy"))
    stack = load_kernels(tmp_path / "stack.npy")
    assert len(stack) == 3
    check(stack[1])
    check(stack[2], expected[::-1])
    check(load_kernel(str(tmp_path / "v5.mat")))
    assert len(load_kernels(tmp_path / "v5.mat")) == 1  # "image" is ignored: a variable is named kernel
    assert [tuple(k.shape) for k in load_kernels(tmp_path / "v5_stack.mat")] == [(5, 7), (5, 7)]
    cell_kernels = load_kernels(tmp_path / "v5_cell.mat")
    assert [tuple(k.shape) for k in cell_kernels] == [(5, 7), (3, 3)]
    check(cell_kernels[0])
    v73 = load_kernels(tmp_path / "v73.mat")
    assert [tuple(k.shape) for k in v73] == [(5, 7), (3, 4)]
    check(v73[0])
    plain = load_kernels(tmp_path / "v73_plain.mat")
    assert len(plain) == 1  # the char variable is not a kernel
    check(plain[0])
    check(load_kernel(tmp_path / "grey.png"), atol=3e-3)
    check(load_kernel(tmp_path / "rgb.png"), atol=3e-3)
    assert torch.equal(load_kernel(tmp_path / "stack.npy", -1), stack[2])


def test_load_kernels_clips_small_negative_values(tmp_path):
    kernel = np.array([[0.0, -0.01, 0.0], [0.2, 1.0, 0.3], [0.0, 0.0, -0.02]])
    np.save(tmp_path / "noisy.npy", kernel)
    loaded = load_kernel(tmp_path / "noisy.npy")
    assert float(loaded.min()) == 0 and float(loaded.sum()) == pytest.approx(1.0)
    assert float(loaded[1, 1]) == pytest.approx(1.0 / 1.5)


@pytest.mark.parametrize(
    "name, content",
    [
        ("garbage.mat", b"not a MATLAB file at all"),
        ("garbage.npy", b"\x93NUMPY garbage"),
        ("garbage.png", b"\x89PNG\r\n\x1a\n broken"),
        ("kernel.txt", b"1 2 3"),
    ],
)
def test_load_kernels_bad_files_raise_kernel_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(KernelError, match=name):
        load_kernels(path)


def test_load_kernels_unusable_contents(tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((3, 3)))
    np.save(tmp_path / "negative.npy", -np.ones((3, 3)))
    np.save(tmp_path / "nan.npy", np.full((3, 3), np.nan))
    np.save(tmp_path / "vector.npy", np.ones(5))
    scipy.io.savemat(tmp_path / "text.mat", {"note": "no kernel here", "n": 3.0})
    for name in ["zeros.npy", "negative.npy", "nan.npy", "vector.npy", "text.mat"]:
        with pytest.raises(KernelError, match=name.replace(".", r"\.")):
            load_kernels(tmp_path / name)
    with pytest.raises(KernelError, match="missing.npy"):
        load_kernels(tmp_path / "missing.npy")
    np.save(tmp_path / "one.npy", np.ones((3, 3)))
    with pytest.raises(KernelError, match="index 1"):
        load_kernel(tmp_path / "one.npy", 1)


@pytest.mark.skipif(not SHARED_KERNELS.is_dir(), reason="shared sample kernels not present")
def test_load_published_kernel_files():
    levin = load_kernels(SHARED_KERNELS / "Levin09.mat")  # v7.3
    assert [k.shape[0] for k in levin] == [19, 17, 15, 27, 13, 21, 23, 23]
    twelve = load_kernels(SHARED_KERNELS / "kernels_12.mat")  # v5 cell array
    assert len(twelve) == 12 and all(k.shape == (25, 25) for k in twelve)
    png = SHARED_KERNELS.parent / "real" / "levin2009" / "kernel" / "im1_kernel1.png"
    if png.is_file():  # the v7.3 arrays come out in MATLAB's orientation, as the published PNGs
        assert np.corrcoef(levin[0].numpy().ravel(), load_kernel(png).numpy().ravel())[0, 1] > 0.99


# --------------------------------------------------------------------------------------------------
# Noise and quantisation


def test_add_noise_statistics_and_determinism():
    images = torch.full((2, 1, 128, 128), 0.4)
    gaussian = add_noise(images, generator=0, gaussian_sigma=0.05)
    assert torch.equal(gaussian, add_noise(images, generator=0, gaussian_sigma=0.05))
    assert float((gaussian - images).std()) == pytest.approx(0.05, rel=0.05)
    assert float((gaussian - images).mean()) == pytest.approx(0.0, abs=0.002)
    peak = 50.0
    shot = add_noise(images, generator=1, poisson_peak=peak)
    assert float(shot.mean()) == pytest.approx(0.4, abs=0.005)
    assert float(shot.var()) == pytest.approx(0.4 / peak, rel=0.05)
    per_image = add_noise(images, generator=2, gaussian_sigma=torch.tensor([0.0, 0.1]))
    assert torch.equal(per_image[0], images[0]) and float(per_image[1].std()) > 0.05
    clipped = add_noise(torch.ones(1, 1, 8, 8), generator=3, gaussian_sigma=0.5)
    assert float(clipped.max()) <= 1 and float(clipped.min()) >= 0


def test_quantize_8bit():
    values = torch.rand(1000, dtype=torch.float64) * 1.2 - 0.1
    quantized = quantize_8bit(values)
    levels = quantized * 255
    assert torch.allclose(levels, levels.round()) and float(quantized.min()) >= 0 and float(quantized.max()) <= 1
    inside = (values >= 0) & (values <= 1)
    assert float((quantized - values)[inside].abs().max()) <= 0.5 / 255 + 1e-12


# --------------------------------------------------------------------------------------------------
# Global blur


def test_synthesize_global_blur_is_a_convolution_and_deterministic():
    sharp = dead_leaves(3, 40, 40, generator=0, dtype=torch.float64)
    out = synthesize_global_blur(sharp, generator=1, length_range=(5, 15), gamma=1.0, quantize=False)
    assert out["blur"].shape == sharp.shape and out["blur"].dtype == torch.float64
    assert out["kernel"].shape[:2] == (3, 1) and out["kernel"].dtype == torch.float64
    assert torch.allclose(out["blur"], blur_with_kernels(sharp, out["kernel"]).clamp(0, 1), atol=1e-12)
    assert torch.equal(out["sharp"], sharp)
    again = synthesize_global_blur(sharp, generator=1, length_range=(5, 15), gamma=1.0, quantize=False)
    assert torch.equal(out["blur"], again["blur"])
    other = synthesize_global_blur(sharp, generator=2, length_range=(5, 15), gamma=1.0, quantize=False)
    assert not torch.equal(out["blur"], other["blur"])

    gamma = synthesize_global_blur(sharp, generator=1, length_range=(5, 15), gamma=2.2, quantize=False)
    expected = blur_with_kernels(sharp**2.2, gamma["kernel"]).clamp(0, 1) ** (1 / 2.2)
    assert torch.allclose(gamma["blur"], expected, atol=1e-12)
    noisy = synthesize_global_blur(sharp.float(), generator=1, noise_sigma=(0.01, 0.02), kernel_model="linear")
    assert noisy["blur"].dtype == torch.float32 and torch.equal(noisy["blur"], quantize_8bit(noisy["blur"]))


def test_synthesize_global_blur_draws_from_a_kernel_bank():
    bank = [torch.ones(3, 5), torch.eye(4), torch.rand(7, 7)]
    centred = [center_kernel(k / k.sum()) for k in bank]
    out = synthesize_global_blur(torch.rand(6, 1, 24, 24), generator=0, kernels=bank)
    side = out["kernel"].shape[-1]
    candidates = [center_kernel(k, side) for k in centred]
    for kernel in out["kernel"][:, 0]:
        assert any(torch.allclose(kernel, c) for c in candidates)


# --------------------------------------------------------------------------------------------------
# Local blur


def slow_render(background, colors, alphas, velocity, acceleration, num_subframes):
    """Every sub-frame rendered and composited explicitly (bilinear warps, transparent outside)."""
    layers, _, height, width = alphas.shape[1:]
    ys, xs = pixel_grid(height, width)
    total = torch.zeros_like(background)
    for n in range(num_subframes):
        t = -0.5 + n / (num_subframes - 1)
        frame = background.clone()
        for j in range(layers):
            p = velocity[:, j] * t + acceleration[:, j] * t * t
            x = (2 * (xs - p[:, 0, None, None]) + 1) / width - 1  # grid_sample, align_corners=False
            y = (2 * (ys - p[:, 1, None, None]) + 1) / height - 1
            grid = torch.stack([x, y], -1)
            color = F.grid_sample(colors[:, j] * alphas[:, j], grid, align_corners=False)
            alpha = F.grid_sample(alphas[:, j], grid, align_corners=False)
            frame = color + (1 - alpha) * frame
        total += frame
    return total / num_subframes


def square_layers(batch, boxes, height, width, channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    colors = torch.rand(batch, len(boxes), channels, height, width, generator=generator, dtype=torch.float64)
    alphas = torch.zeros(batch, len(boxes), 1, height, width, dtype=torch.float64)
    for j, (top, left, size, opacity) in enumerate(boxes):
        alphas[:, j, :, top : top + size, left : left + size] = opacity
    return colors, alphas


def test_composite_single_object_is_the_mean_of_subframes():
    background = torch.rand(1, 3, 30, 34, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    colors, alphas = square_layers(1, [(8, 9, 12, 1.0)], 30, 34)
    velocity = torch.tensor([[[7.3, -2.1]]], dtype=torch.float64)
    acceleration = torch.tensor([[[2.0, 3.5]]], dtype=torch.float64)
    out = composite_moving_layers(background, colors, alphas, velocity, acceleration)
    n = math.ceil(float(velocity.norm() + acceleration.norm())) + 1
    expected = slow_render(background, colors, alphas, velocity, acceleration, n)
    assert torch.allclose(out["blur"], expected, atol=1e-9)
    still = slow_render(background, colors, alphas, velocity * 0, acceleration * 0, 2)
    assert torch.allclose(out["sharp"], still, atol=1e-12)
    fixed = composite_moving_layers(background, colors, alphas, velocity, acceleration, num_subframes=5)
    assert torch.allclose(fixed["blur"], slow_render(background, colors, alphas, velocity, acceleration, 5), atol=1e-9)


def test_composite_overlapping_objects_occlusion_and_frame_exit():
    background = torch.rand(2, 3, 28, 36, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    boxes = [(4, 4, 14, 1.0), (8, 10, 12, 0.6), (2, 24, 10, 1.0)]  # overlapping, one half-transparent, one at the edge
    colors, alphas = square_layers(2, boxes, 28, 36, seed=4)
    generator = torch.Generator().manual_seed(5)
    velocity = torch.randn(2, 3, 2, generator=generator, dtype=torch.float64) * 8
    acceleration = torch.randn(2, 3, 2, generator=generator, dtype=torch.float64) * 4
    out = composite_moving_layers(background, colors, alphas, velocity, acceleration)
    n = math.ceil(float((velocity.norm(dim=-1) + acceleration.norm(dim=-1)).max())) + 1
    assert torch.allclose(out["blur"], slow_render(background, colors, alphas, velocity, acceleration, n), atol=1e-9)
    # Occlusion at mid-exposure: the last layer is in front.
    front = alphas[:, 2, 0] > 0
    assert torch.allclose(out["sharp"][:, :, 5, 30], colors[:, 2, :, 5, 30])
    assert torch.allclose(out["displacement_end"][:, :, 5, 30], velocity[:, 2] / 2 + acceleration[:, 2] / 4)
    assert bool(front[:, 5, 30].all())
    # Layer 1 (alpha 0.6) over layer 0 (opaque).
    mixed = 0.6 * colors[:, 1, :, 10, 12] + 0.4 * colors[:, 0, :, 10, 12]
    assert torch.allclose(out["sharp"][:, :, 10, 12], mixed)


def test_composite_displacements_reproduce_the_quadratic_motion():
    background = torch.zeros(1, 1, 24, 24, dtype=torch.float64)
    colors, alphas = square_layers(1, [(6, 6, 10, 1.0)], 24, 24, channels=1)
    v = torch.tensor([[[6.0, -4.0]]], dtype=torch.float64)
    a = torch.tensor([[[3.0, 2.0]]], dtype=torch.float64)
    out = composite_moving_layers(background, colors, alphas, v, a)
    start, end = out["displacement_start"][0], out["displacement_end"][0]
    inside = alphas[0, 0, 0] > 0.5
    assert torch.allclose(start[:, inside], (-v[0, 0] / 2 + a[0, 0] / 4)[:, None])
    assert torch.allclose(end[:, inside], (v[0, 0] / 2 + a[0, 0] / 4)[:, None])
    assert bool((start[:, ~inside] == 0).all()) and bool((end[:, ~inside] == 0).all())
    # M2AENet Eq. 4: o(t_n) = (o0 + oN)/2 s^2 + (oN - o0)/2 s with s = 2n/(N-1) - 1 = 2t.
    o0, on = start[:, 10, 10], end[:, 10, 10]
    for t in torch.linspace(-0.5, 0.5, 9, dtype=torch.float64):
        s = 2 * t
        interpolated = (o0 + on) / 2 * s**2 + (on - o0) / 2 * s
        assert torch.allclose(interpolated, v[0, 0] * t + a[0, 0] * t * t)


def test_synthesize_local_blur_mask_and_background_properties():
    background = dead_leaves(4, 48, 56, generator=0, dtype=torch.float64)
    out = synthesize_local_blur(background, generator=1, quantize=False, gamma=2.2, max_displacement=10.0)
    mask = out["mask"].bool()
    assert out["mask"].shape == (4, 1, 48, 56) and set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    assert bool(mask.flatten(1).any(1).all()) and not bool(mask.all())
    outside = ~mask.expand_as(background)
    assert torch.allclose(out["sharp"][outside], background[outside], atol=1e-9)  # static background
    assert float((out["blur"] - out["sharp"])[outside].abs().max()) <= 0.5 / 255  # blur only inside the mask
    assert float((out["blur"] - out["sharp"])[mask.expand_as(background)].abs().max()) > 0.1
    moving = (out["displacement_end"] != 0).any(1, keepdim=True)
    assert bool((moving <= mask).all())  # objects at mid-exposure lie inside the mask
    magnitude = torch.maximum(out["displacement_start"].norm(dim=1), out["displacement_end"].norm(dim=1))[moving[:, 0]]
    assert float(magnitude.min()) >= 2.0 - 1e-9 and float(magnitude.max()) <= 10.0 + 1e-9
    for key in ("sharp", "blur", "mask", "displacement_start", "displacement_end"):
        assert out[key].dtype == torch.float64


def test_synthesize_local_blur_determinism_and_no_objects():
    background = torch.rand(2, 3, 32, 32)
    a = synthesize_local_blur(background, generator=7)
    b = synthesize_local_blur(background, generator=7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = synthesize_local_blur(background, generator=8)
    assert not torch.equal(a["blur"], c["blur"])
    assert a["blur"].dtype == torch.float32 and torch.equal(a["blur"], quantize_8bit(a["blur"]))
    empty = synthesize_local_blur(background, generator=7, num_objects=0, quantize=False)
    assert not bool(empty["mask"].any()) and torch.allclose(empty["blur"], background, atol=1e-6)
    quantized = synthesize_local_blur(background, generator=9)
    outside = ~quantized["mask"].bool().expand_as(background)
    assert float((quantized["blur"] - quantized["sharp"])[outside].abs().max()) <= 1 / 255 + 1e-7


# --------------------------------------------------------------------------------------------------
# On-the-fly dataset


def write_pngs(folder: Path, sizes) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for number, (height, width, channels) in enumerate(sizes):
        pixels = (rng.random((height, width, channels)) * 255).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / f"img{number}.png")


def test_dataset_from_a_folder_is_deterministic_with_consistent_keys(tmp_path):
    write_pngs(tmp_path / "sharp", [(40, 50, 3), (20, 24, 1), (64, 48, 3)])  # one grey, one smaller than the patch
    options = dict(kind="local", patch_size=32, seed=3, local_options={"max_displacement": 6.0})
    data = SyntheticBlurDataset(tmp_path / "sharp", **options)
    assert len(data) == 3
    twin = SyntheticBlurDataset(tmp_path / "sharp", **options)
    for index in range(3):
        sample = data[index]
        assert sample["blur"].shape == (3, 32, 32) and sample["sharp"].shape == (3, 32, 32)
        assert sample["mask"].shape == (1, 32, 32)
        assert sample["displacement_start"].shape == (2, 32, 32) and sample["displacement_end"].shape == (2, 32, 32)
        assert sample["name"] == f"img{index}_{index:06d}" and sample["kind"] == "local"
        assert "kernel" not in sample
        other = twin[index]
        assert all(torch.equal(sample[k], other[k]) for k in ("blur", "sharp", "mask", "displacement_end"))
    assert not torch.equal(data[0]["blur"], data[1]["blur"])
    grey = SyntheticBlurDataset(tmp_path / "sharp", kind="global", patch_size=32)[1]["blur"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    before = data[0]["sharp"]
    data.set_epoch(1)
    assert not torch.equal(before, data[0]["sharp"])
    paths = SyntheticBlurDataset([tmp_path / "sharp" / "img2.png"], patch_size=16, length=5, kind="global")
    assert len(paths) == 5 and paths[4]["kernel"].shape == (1, 129, 129)


def test_dataset_of_dead_leaves_collates_for_every_kind():
    for kind in ("local", "global", "mixed"):
        data = SyntheticBlurDataset(
            kind=kind, patch_size=(24, 28), length=6, seed=1, global_options={"length_range": (5, 9)}
        )
        batch = next(iter(DataLoader(data, batch_size=6)))
        assert batch["blur"].shape == (6, 3, 24, 28) and batch["mask"].shape == (6, 1, 24, 28)
        assert batch["displacement_end"].shape == (6, 2, 24, 28)
        assert ("kernel" in batch) == (kind == "global")
        if kind == "global":
            assert batch["kernel"].shape == (6, 1, 17, 17) and bool((batch["mask"] == 1).all())
        if kind == "mixed":
            assert set(batch["kind"]) == {"local", "global"}
            is_global = torch.tensor([k == "global" for k in batch["kind"]])
            assert bool((batch["mask"][is_global] == 1).all())
            assert bool((batch["displacement_end"][is_global] == 0).all())
        assert batch["name"][0] == "dead_leaves_000000"


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError):
        SyntheticBlurDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        SyntheticBlurDataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="missing"):
        SyntheticBlurDataset([tmp_path / "nope.png"])
    with pytest.raises(ConfigError):
        SyntheticBlurDataset(kind="sideways")
    with pytest.raises(ConfigError):
        SyntheticBlurDataset(patch_size=0)
    with pytest.raises(IndexError):
        SyntheticBlurDataset(length=2, patch_size=8)[2]


def test_synthesize_batch_kinds_and_generators():
    sharp = torch.rand(4, 3, 24, 24)
    options = {"max_displacement": 5.0}
    local = synthesize_batch(sharp, "local", 0, local_options=options)
    assert torch.equal(local["blur"], synthesize_batch(sharp, "local", 0, local_options=options)["blur"])
    assert "kernel" not in local and bool(local["mask"].flatten(1).any(1).all())
    short = {"length_range": (5, 9)}
    global_ = synthesize_batch(sharp, "global", torch.Generator().manual_seed(0), global_options=short)
    assert global_["kernel"].shape[:2] == (4, 1) and bool((global_["mask"] == 1).all())
    mixed = synthesize_batch(sharp, "mixed", 1, global_fraction=1.0, global_options=short)
    assert bool((mixed["mask"] == 1).all()) and "kernel" not in mixed
    with pytest.raises(ConfigError):
        synthesize_batch(sharp, "sideways", 0)
