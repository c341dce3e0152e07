"""Tests of adeblur.viz against slow per-pixel references and independent oracles (colorsys, matplotlib)."""

from __future__ import annotations

import colorsys
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adeblur.errors import AdeblurError
from adeblur.viz import (
    color_wheel,
    flow_to_color,
    heatmap,
    mask_overlay,
    motion_arrows,
    side_by_side,
    visualise_maps,
)


def middlebury_reference(u: float, v: float, max_radius: float) -> tuple[float, float, float]:
    """One pixel of Sun's computeColor.m (the Middlebury flow colour code), transcribed loop by loop."""
    wheel = []
    for i in range(15):  # RY
        wheel.append((255, math.floor(255 * i / 15), 0))
    for i in range(6):  # YG
        wheel.append((255 - math.floor(255 * i / 6), 255, 0))
    for i in range(4):  # GC
        wheel.append((0, 255, math.floor(255 * i / 4)))
    for i in range(11):  # CB
        wheel.append((0, 255 - math.floor(255 * i / 11), 255))
    for i in range(13):  # BM
        wheel.append((math.floor(255 * i / 13), 0, 255))
    for i in range(6):  # MR
        wheel.append((255, 0, 255 - math.floor(255 * i / 6)))
    ncols = len(wheel)
    rad = math.hypot(u, v) / max_radius
    a = math.atan2(-v, -u) / math.pi
    fk = (a + 1) / 2 * (ncols - 1) + 1  # MATLAB's 1-based index
    k0 = math.floor(fk)
    k1 = 1 if k0 + 1 == ncols + 1 else k0 + 1
    f = fk - k0
    out = []
    for channel in range(3):
        col = (1 - f) * wheel[k0 - 1][channel] / 255 + f * wheel[k1 - 1][channel] / 255
        col = 1 - rad * (1 - col) if rad <= 1 else col * 0.75
        out.append(col)
    return tuple(out)


def hue_degrees(rgb: torch.Tensor) -> float:
    return 360 * colorsys.rgb_to_hsv(*rgb.tolist())[0]


# ---------------------------------------------------------------------------------------------
# flow_to_color / color_wheel


def test_flow_to_color_matches_per_pixel_middlebury_reference():
    generator = torch.Generator().manual_seed(0)
    flow = torch.randn(2, 9, 11, generator=generator, dtype=torch.float64) * 3
    for max_magnitude in (None, 2.0):  # 2.0: many vectors out of range (darkened)
        colors = flow_to_color(flow, max_magnitude=max_magnitude)
        lengths = [math.hypot(u, v) for u, v in zip(flow[0].flatten().tolist(), flow[1].flatten().tolist())]
        scale = max(lengths) if max_magnitude is None else max_magnitude
        for y in range(9):
            for x in range(11):
                expected = middlebury_reference(float(flow[0, y, x]), float(flow[1, y, x]), scale)
                assert colors[:, y, x].tolist() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("direction", "hue_range"),
    [
        ((1.0, 0.0), (-15.0, 15.0)),  # right: red
        ((0.0, 1.0), (40.0, 65.0)),  # down (y grows downwards): yellow-orange
        ((-1.0, 0.0), (180.0, 200.0)),  # left: cyan-blue
        ((0.0, -1.0), (250.0, 275.0)),  # up: blue-violet
    ],
)
def test_flow_to_color_hue_encodes_direction_saturation_magnitude(direction, hue_range):
    full = flow_to_color(torch.tensor(direction).view(2, 1, 1), max_magnitude=1.0)[:, 0, 0]
    half = flow_to_color(torch.tensor(direction).view(2, 1, 1) * 0.5, max_magnitude=1.0)[:, 0, 0]
    hue = hue_degrees(full)
    hue = hue - 360 if hue > 180 and hue_range[0] < 0 else hue
    assert hue_range[0] <= hue <= hue_range[1]
    assert hue_degrees(half) == pytest.approx(hue_degrees(full), abs=1.0)  # same direction, same hue
    assert colorsys.rgb_to_hsv(*full.tolist())[1] == pytest.approx(1.0, abs=1e-6)  # full length: saturated
    assert colorsys.rgb_to_hsv(*half.tolist())[1] == pytest.approx(0.5, abs=1e-6)
    assert max(full.tolist()) == pytest.approx(1.0)  # value stays 1 inside the range


def test_flow_to_color_zero_motion_is_white_and_invalid_is_black():
    assert torch.equal(flow_to_color(torch.zeros(2, 3, 4)), torch.ones(3, 3, 4))
    flow = torch.zeros(2, 2, 2)
    flow[0, 0, 0] = 5.0
    flow[1, 1, 1] = float("nan")
    colors = flow_to_color(flow)
    assert torch.equal(colors[:, 0, 1], torch.ones(3))  # no motion beside a moving pixel: white
    assert torch.equal(colors[:, 1, 1], torch.zeros(3))  # unknown: black
    assert torch.isfinite(colors).all()


def test_flow_to_color_out_of_range_is_darkened_and_batch_of_one_accepted():
    flow = torch.tensor([3.0, 0.0]).view(1, 2, 1, 1)
    inside = flow_to_color(flow, max_magnitude=3.0)
    outside = flow_to_color(flow, max_magnitude=1.0)
    assert inside.shape == (3, 1, 1)
    assert torch.allclose(outside, 0.75 * inside)


def test_flow_to_color_rejects_bad_input():
    with pytest.raises(ValueError, match="displacement must be"):
        flow_to_color(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="max_magnitude"):
        flow_to_color(torch.zeros(2, 4, 4), max_magnitude=0.0)
    with pytest.raises(TypeError):
        flow_to_color(torch.zeros(2, 4, 4, dtype=torch.int64))


def test_color_wheel_legend():
    legend = color_wheel(65)
    assert legend.shape == (3, 65, 65) and legend.dtype == torch.float32
    assert torch.equal(legend[:, 32, 32], torch.ones(3))  # centre: no motion
    assert torch.equal(legend[:, 0, 0], torch.ones(3))  # outside the disc
    rim_right = legend[:, 32, 64]  # 32 px right of the centre = the full radius
    assert rim_right.tolist() == pytest.approx(middlebury_reference(32.0, 0.0, 32.0), abs=1e-6)
    assert 250 <= hue_degrees(legend[:, 1, 32]) <= 275  # top of the disc: upwards motion
    assert legend.min() >= 0 and legend.max() <= 1


# ---------------------------------------------------------------------------------------------
# mask_overlay


def test_mask_overlay_without_outline_changes_only_masked_pixels():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(3, 12, 10, generator=generator)
    mask = (torch.rand(1, 12, 10, generator=generator) > 0.6).float()
    overlay = mask_overlay(image, mask, color=(0.0, 1.0, 0.0), alpha=0.3, outline=False)
    unmasked = mask[0] == 0
    assert torch.equal(overlay[:, unmasked], image[:, unmasked])
    expected = 0.7 * image + 0.3 * torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    assert torch.allclose(overlay[:, ~unmasked], expected[:, ~unmasked], atol=1e-6)


def test_mask_overlay_outline_is_the_inner_border_not_the_image_edge():
    image = torch.full((3, 10, 10), 0.5)
    mask = torch.zeros(1, 10, 10)
    mask[:, 0:6, 3:8] = 1  # touches the top edge of the image
    overlay = mask_overlay(image, mask, color=(1.0, 0.0, 0.0), alpha=0.5, outline_width=1)
    red = torch.tensor([1.0, 0.0, 0.0])
    border = mask[0].bool() & ~(F.max_pool2d(1 - mask[None], 3, stride=1, padding=1)[0, 0] == 0)
    # an oracle by loops: a masked pixel is on the border if a 4- or 8-neighbour inside the image is unmasked
    for y in range(10):
        for x in range(10):
            neighbours = [
                mask[0, y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if 0 <= y + dy < 10 and 0 <= x + dx < 10
            ]  # fmt: skip
            on_border = bool(mask[0, y, x]) and min(neighbours) == 0
            assert on_border == bool(border[y, x])
            if on_border:
                assert torch.equal(overlay[:, y, x], red)
            elif mask[0, y, x]:
                assert torch.allclose(overlay[:, y, x], torch.tensor([0.75, 0.25, 0.25]))
            else:
                assert torch.equal(overlay[:, y, x], image[:, y, x])
    assert not torch.equal(overlay[:, 0, 5], red)  # top edge inside the mask: not outlined


def test_mask_overlay_grey_image_and_low_resolution_mask():
    image = torch.rand(1, 8, 8)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)  # one quadrant, batched by one
    overlay = mask_overlay(image, mask, outline=False)
    assert overlay.shape == (3, 8, 8)
    assert torch.equal(overlay[:, 4:, :], image.expand(3, 8, 8)[:, 4:, :])
    assert not torch.equal(overlay[:, :4, :4], image.expand(3, 8, 8)[:, :4, :4])


def test_mask_overlay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        mask_overlay(torch.rand(3, 4, 4), torch.ones(1, 4, 4), alpha=1.5)
    with pytest.raises(ValueError, match="color"):
        mask_overlay(torch.rand(3, 4, 4), torch.ones(1, 4, 4), color=(2.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="mask must be"):
        mask_overlay(torch.rand(3, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="image must be"):
        mask_overlay(torch.rand(2, 4, 4), torch.ones(1, 4, 4))


# ---------------------------------------------------------------------------------------------
# motion_arrows


def test_motion_arrows_drawn_only_at_grid_points():
    height, width, spacing = 64, 80, 16
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(2))
    start = torch.zeros(2, height, width)
    start[0], start[1] = -5.0, 3.0
    end = -start
    arrows = motion_arrows(image, start, end, spacing=spacing, line_width=1)
    changed = (arrows != image).any(0)
    reach = math.hypot(5, 3) + 3.0  # arrow length, half a line, the rim and rasterisation slack
    grid = [(gy, gx) for gy in range(spacing // 2, height, spacing) for gx in range(spacing // 2, width, spacing)]
    ys, xs = torch.nonzero(changed, as_tuple=True)
    for y, x in zip(ys.tolist(), xs.tolist()):
        assert min(math.hypot(y - gy, x - gx) for gy, gx in grid) <= reach
    for gy, gx in grid:  # every grid point has both arrows: start colour at the start tip, end colour at the end
        assert torch.allclose(arrows[:, gy + 3, gx - 5], torch.tensor([0.1, 0.55, 1.0]))
        assert torch.allclose(arrows[:, gy - 3, gx + 5], torch.tensor([1.0, 0.85, 0.0]))
    assert arrows.dtype == image.dtype and arrows.min() >= 0 and arrows.max() <= 1


def test_motion_arrows_only_where_masked_and_nothing_for_still_pixels():
    image = torch.zeros(3, 32, 32)
    start = torch.zeros(2, 32, 32)
    start[0] = 6.0
    mask = torch.zeros(1, 32, 32)
    mask[:, :16, :16] = 1  # only the grid point (8, 8) is blurred
    arrows = motion_arrows(image, start, -start, spacing=16, mask=mask)
    changed = (arrows != 0).any(0)
    assert changed[:, :16].any() and changed[4:13, :].any()
    assert not changed[16:].any() and not changed[:, 17:].any()
    still = motion_arrows(image, torch.zeros(2, 32, 32), torch.zeros(2, 32, 32), spacing=16)
    assert torch.equal(still, image)


def test_motion_arrows_rejects_mismatched_fields():
    with pytest.raises(ValueError, match="displacement_end must be"):
        motion_arrows(torch.rand(3, 8, 8), torch.zeros(2, 8, 8), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="spacing"):
        motion_arrows(torch.rand(3, 8, 8), torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), spacing=0)


# ---------------------------------------------------------------------------------------------
# heatmap


def test_heatmap_range_matches_matplotlib():
    values = torch.tensor([[-1.0, 0.0, 0.5, 1.0, 2.0]]).view(1, 1, 5)
    colors = heatmap(values, vmin=0.0, vmax=1.0, colormap="magma")
    cmap = matplotlib.colormaps["magma"]
    for x, level in enumerate([0.0, 0.0, 0.5, 1.0, 1.0]):  # clamped outside [vmin, vmax]
        expected = cmap(round(level * 255) / 255)[:3]
        assert colors[:, 0, x].tolist() == pytest.approx(expected, abs=1e-6)
    automatic = heatmap(values)  # default range: the values' own minimum and maximum
    assert automatic[:, 0, 0].tolist() == pytest.approx(matplotlib.colormaps["viridis"](0.0)[:3], abs=1e-6)
    assert automatic[:, 0, 4].tolist() == pytest.approx(matplotlib.colormaps["viridis"](1.0)[:3], abs=1e-6)
    assert colors.min() >= 0 and colors.max() <= 1


def test_heatmap_constant_and_non_finite_values():
    constant = heatmap(torch.full((1, 3, 3), 7.0))
    assert torch.isfinite(constant).all()
    assert torch.equal(constant, constant[:, :1, :1].expand(3, 3, 3))
    with_nan = heatmap(torch.tensor([float("nan"), 0.0, 1.0]).view(1, 1, 3))
    assert torch.equal(with_nan[:, 0, 0], with_nan[:, 0, 1])  # non-finite: vmin's colour


def test_heatmap_rejects_unknown_colormap_and_inverted_range():
    with pytest.raises(AdeblurError, match="unknown colormap 'no-such-map'"):
        heatmap(torch.rand(1, 2, 2), colormap="no-such-map")
    with pytest.raises(ValueError, match="vmax"):
        heatmap(torch.rand(1, 2, 2), vmin=1.0, vmax=0.0)


# ---------------------------------------------------------------------------------------------
# side_by_side


def test_side_by_side_sizes_and_placement():
    first = torch.rand(3, 20, 30)
    second = torch.rand(1, 12, 7)  # grey, shorter
    row = side_by_side([first, second], gap=5, background=1.0)
    assert row.shape == (3, 20, 30 + 5 + 7)
    assert torch.equal(row[:, :, :30], first)
    assert torch.equal(row[:, :12, 35:], second.expand(3, 12, 7))
    assert torch.equal(row[:, :, 30:35], torch.ones(3, 20, 5))  # the gap
    assert torch.equal(row[:, 12:, 35:], torch.ones(3, 8, 7))  # padding under the shorter image


def test_side_by_side_labels_add_a_strip_with_text():
    images = [torch.zeros(3, 40, 50), torch.zeros(3, 40, 50)]
    row = side_by_side(images, ["blurred", "restored"], gap=2)
    strip = row.shape[1] - 40
    assert row.shape[2] == 102 and strip > 0
    assert torch.equal(row[:, strip:, :50], images[0])
    text = row[:, :strip]
    assert text.min() < 0.5 and text.max() == 1.0  # dark text on the white strip
    assert (text[:, :, :50] < 0.5).any() and (text[:, :, 52:] < 0.5).any()  # a label over each image
    with pytest.raises(ValueError, match="2 labels for 1 images"):
        side_by_side(images[:1], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        side_by_side([])


# ---------------------------------------------------------------------------------------------
# output ranges and dtypes, visualise_maps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_are_rgb_in_unit_range_with_the_input_dtype(dtype):
    generator = torch.Generator().manual_seed(3)
    image = (torch.rand(3, 16, 16, generator=generator) * 1.4 - 0.2).to(dtype)  # model outputs overshoot
    mask = (torch.rand(1, 16, 16, generator=generator) > 0.5).to(dtype)
    flow = (torch.randn(2, 16, 16, generator=generator) * 4).to(dtype)
    outputs = [
        mask_overlay(image, mask),
        flow_to_color(flow),
        flow_to_color(flow, max_magnitude=1.0),
        motion_arrows(image, flow, -flow, spacing=8),
        heatmap(flow[:1]),
        side_by_side([image, mask], ["image", "mask"]),
    ]
    for output in outputs:
        assert output.dtype == dtype and output.ndim == 3 and output.shape[0] == 3
        assert output.min() >= 0 and output.max() <= 1


def test_visualise_maps_renders_known_and_extra_maps():
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(1, 3, 32, 32, generator=generator)
    start = torch.randn(1, 2, 32, 32, generator=generator)
    end = torch.randn(1, 2, 32, 32, generator=generator)
    mask = torch.ones(1, 1, 32, 32)
    maps = {
        "blur_mask": mask,
        "blur_probability": torch.rand(1, 1, 32, 32, generator=generator),
        "displacement_start": start,
        "displacement_end": end,
        "attention": torch.rand(1, 1, 32, 32, generator=generator),  # SAPHNet-like extras
        "offsets": torch.randn(1, 2, 32, 32, generator=generator),
        "fused": torch.rand(1, 3, 32, 32, generator=generator),
    }
    rendered = visualise_maps(image, maps, spacing=8)
    assert sorted(rendered) == ["arrows", "attention", "blur_probability", "fused", "mask", "motion", "offsets"]
    assert torch.equal(rendered["mask"], mask_overlay(image, mask))
    assert torch.equal(rendered["motion"], flow_to_color(end[0] - start[0]))
    assert torch.equal(rendered["arrows"], motion_arrows(image, start, end, spacing=8, mask=mask))
    assert torch.equal(rendered["blur_probability"], heatmap(maps["blur_probability"], vmin=0.0, vmax=1.0))
    assert torch.equal(rendered["offsets"], flow_to_color(maps["offsets"][0]))
    assert torch.equal(rendered["fused"], maps["fused"][0])
    for picture in rendered.values():
        assert picture.shape == (3, 32, 32) and picture.min() >= 0 and picture.max() <= 1
    with pytest.raises(ValueError, match="map 'features' has shape"):
        visualise_maps(image, {"features": torch.rand(1, 8, 32, 32)})


def test_visualise_maps_without_motion_or_mask():
    image = torch.rand(3, 8, 8)
    assert visualise_maps(image, {}) == {}
    only_start = visualise_maps(image, {"displacement_start": torch.ones(2, 8, 8)})
    assert list(only_start) == ["displacement_start"]  # half a pair: drawn as a plain field
    assert np.allclose(only_start["displacement_start"].numpy(), flow_to_color(torch.ones(2, 8, 8)).numpy())
