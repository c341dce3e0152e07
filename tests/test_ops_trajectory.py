"""Trajectory interpolation (Eq. 4, Eq. 12) and motion-aware DCN offsets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adeblur.ops import (
    deform_conv2d,
    linear_trajectory,
    motion_aware_offsets,
    quadratic_trajectory,
    trajectory_macs,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_instants", [2, 3, 4, 9, 15])
def test_quadratic_reproduces_quadratic_motion(num_instants, device, dtype):
    g = torch.Generator().manual_seed(num_instants)
    curvature = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64) * 3
    velocity = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64) * 3

    def motion(s: float) -> torch.Tensor:  # any quadratic motion through 0 at mid-exposure (s = 0)
        return curvature * s * s + velocity * s

    start, end = (motion(-1.0).to(device, dtype), motion(1.0).to(device, dtype))
    trajectory = quadratic_trajectory(start, end, num_instants)
    assert trajectory.shape == (2, num_instants, 2, 3, 4) and trajectory.dtype == dtype
    for n in range(num_instants):
        expected = motion(2 * n / (num_instants - 1) - 1)
        torch.testing.assert_close(trajectory[:, n].cpu().double(), expected, atol=1e-5, rtol=1e-5)


def test_quadratic_mid_exposure_is_exactly_zero_and_endpoints_are_kept():
    g = torch.Generator().manual_seed(0)
    start, end = torch.randn(1, 2, 5, 5, generator=g), torch.randn(1, 2, 5, 5, generator=g)
    trajectory = quadratic_trajectory(start, end, 9)
    assert torch.equal(trajectory[:, 4], torch.zeros_like(start))
    torch.testing.assert_close(trajectory[:, 0], start)
    torch.testing.assert_close(trajectory[:, 8], end)


@pytest.mark.parametrize("num_instants", [3, 4, 9])
def test_linear_matches_eq12(num_instants):
    g = torch.Generator().manual_seed(1)
    start, end = torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, 2, 3, 3, generator=g)
    trajectory = linear_trajectory(start, end, num_instants)
    half = (num_instants - 1) / 2
    for n in range(num_instants):
        if n < half:
            expected = (1 - 2 * n / (num_instants - 1)) * start
        elif n > half:
            expected = (2 * n / (num_instants - 1) - 1) * end
        else:
            expected = torch.zeros_like(start)
        torch.testing.assert_close(trajectory[:, n], expected)


def test_linear_and_quadratic_differ_in_between():
    start, end = torch.full((1, 2, 1, 1), -2.0), torch.full((1, 2, 1, 1), 4.0)
    assert not torch.allclose(linear_trajectory(start, end, 9), quadratic_trajectory(start, end, 9))


def test_unbatched_displacements():
    start, end = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert quadratic_trajectory(start, end, 9).shape == (9, 2, 3, 4)
    assert linear_trajectory(start, end, 9).shape == (9, 2, 3, 4)
    assert motion_aware_offsets(quadratic_trajectory(start, end, 9)).shape == (18, 3, 4)


def _sample(image: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Independent bilinear sampler: image (1, 1, H, W) at z + (dx, dy), zeros outside (grid_sample)."""
    height, width = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=image.dtype), torch.arange(width, dtype=image.dtype),
                            indexing="ij")  # fmt: skip
    grid = torch.stack(((xs + dx) / (width - 1) * 2 - 1, (ys + dy) / (height - 1) * 2 - 1), -1)[None]
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]


@pytest.mark.parametrize("dilation", [1, 2])
def test_motion_aware_offsets_make_taps_sample_the_trajectory(dilation):
    g = torch.Generator().manual_seed(2)
    height, width = 7, 9
    image = torch.rand(1, 1, height, width, generator=g, dtype=torch.float64)
    start = (torch.rand(1, 2, height, width, generator=g, dtype=torch.float64) - 0.5) * 6
    end = (torch.rand(1, 2, height, width, generator=g, dtype=torch.float64) - 0.5) * 6
    trajectory = quadratic_trajectory(start, end, 9)
    offsets = motion_aware_offsets(trajectory, dilation=dilation)
    delta_per_tap = torch.eye(9, dtype=torch.float64).view(9, 1, 3, 3)  # output channel k = tap k alone
    sampled = deform_conv2d(image, offsets, delta_per_tap, padding=dilation, dilation=dilation, backend="torch")
    for k in range(9):
        expected = _sample(image, trajectory[0, k, 0], trajectory[0, k, 1])
        torch.testing.assert_close(sampled[0, k], expected, atol=1e-5, rtol=0)


def test_pure_translation_samples_the_translated_pixel_at_every_tap():
    dx, dy = 2, -1
    image = torch.rand(1, 1, 6, 7, generator=torch.Generator().manual_seed(3))
    trajectory = torch.zeros(1, 9, 2, 6, 7)
    trajectory[:, :, 0], trajectory[:, :, 1] = dx, dy
    sampled = deform_conv2d(image, motion_aware_offsets(trajectory), torch.eye(9).view(9, 1, 3, 3), padding=1,
                            backend="torch")  # fmt: skip
    expected = torch.zeros(6, 7)
    expected[max(0, -dy) : 6 - max(0, dy), max(0, -dx) : 7 - max(0, dx)] = image[
        0, 0, max(0, dy) : 6 + min(0, dy), max(0, dx) : 7 + min(0, dx)
    ]
    for k in range(9):
        torch.testing.assert_close(sampled[0, k], expected)


def test_offsets_layout_is_dy_dx_minus_grid():
    trajectory = torch.zeros(1, 9, 2, 1, 1)
    trajectory[0, 5, 0], trajectory[0, 5, 1] = 0.25, 0.75  # tap 5 is grid (0, +1): o = (x 0.25, y 0.75)
    offsets = motion_aware_offsets(trajectory)[0, :, 0, 0]
    assert offsets[10].item() == pytest.approx(0.75) and offsets[11].item() == pytest.approx(0.25 - 1)
    assert offsets[8].item() == 0 and offsets[9].item() == 0  # centre tap, zero motion


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_instants"):
        quadratic_trajectory(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), 1)
    with pytest.raises(ValueError, match="same shape"):
        linear_trajectory(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4), 9)
    with pytest.raises(ValueError, match="25"):
        motion_aware_offsets(torch.zeros(1, 9, 2, 3, 3), kernel_size=5)
    with pytest.raises(ValueError, match="odd"):
        motion_aware_offsets(torch.zeros(1, 4, 2, 3, 3), kernel_size=2)


def test_macs():
    assert trajectory_macs(10, 9) == 10 * 2 * (2 + 2 * 9)
    assert trajectory_macs(10, 9, kind="linear") == 10 * 2 * 9
