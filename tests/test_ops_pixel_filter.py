"""SAPHNet's pixel-dependent filtering (Eq. 11) against an explicit bilinear-sampling loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reference import bilinear_sample

from adeblur.engine.profile import count_macs
from adeblur.ops import (
    PixelDependentFilter,
    deform_conv2d_macs,
    direction_to_degrees,
    dominant_offset_direction,
    pixel_dependent_filter,
    pixel_dependent_filter_macs,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
SWITCHES = [(True, True), (True, False), (False, True), (False, False)]  # (adaptive_kernel, learn_offsets)


def reference_pdf(x, kernel_weights, offsets, weight, bias=None):
    """Eq. 11 literally: y_j = sum_k V_{j,k} W[k] x[j + p_k + Delta_k], one output value at a time."""
    batch, in_channels, height, width = x.shape
    out_channels, _, size, _ = weight.shape
    half = size // 2
    xs, v, off, w = x.double().tolist(), kernel_weights.double().tolist(), offsets.double().tolist(), weight.tolist()
    out = torch.zeros(batch, out_channels, height, width, dtype=torch.float64)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                for o in range(out_channels):
                    total = 0.0 if bias is None else float(bias[o])
                    for k in range(size * size):
                        ky, kx = divmod(k, size)  # tap p_k = (ky - half, kx - half), raster order
                        y = i + ky - half + off[b][2 * k][i][j]  # dy first (deform_conv2d's layout)
                        xx = j + kx - half + off[b][2 * k + 1][i][j]
                        for c in range(in_channels):
                            total += v[b][k][i][j] * w[o][c][ky][kx] * bilinear_sample(xs[b][c], y, xx)
                    out[b, o, i, j] = total
    return out


def _case(dtype=torch.float64, seed=0, batch=2, cin=2, cout=3, size=3, height=4, width=5):
    g = torch.Generator().manual_seed(seed)
    taps = size * size
    x = torch.randn(batch, cin, height, width, generator=g, dtype=dtype)
    kernel_weights = torch.rand(batch, taps, height, width, generator=g, dtype=dtype) * 2
    offsets = (torch.rand(batch, 2 * taps, height, width, generator=g, dtype=dtype) - 0.5) * 5  # some outside
    weight = torch.randn(cout, cin, size, size, generator=g, dtype=dtype)
    bias = torch.randn(cout, generator=g, dtype=dtype)
    return x, kernel_weights, offsets, weight, bias


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [3, 5])
def test_matches_bilinear_sampling_loop(size, dtype, device):
    tensors = _case(dtype, size=size, cin=2, cout=2, height=3, width=4)
    out = pixel_dependent_filter(*(t.to(device) for t in tensors))
    assert out.dtype == dtype and out.device.type == device and out.shape == (2, 2, 3, 4)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out.cpu().double(), reference_pdf(*tensors), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_without_offsets_matches_the_deformable_path_and_the_loop(size, dtype, device):
    """offsets=None (the im2col path) = zero offsets through deform_conv2d = Eq. 11 with Delta = 0."""
    x, kernel_weights, offsets, weight, bias = _case(dtype, size=size, height=5, width=4)
    zeros = torch.zeros_like(offsets)
    args = [t.to(device) for t in (x, kernel_weights)]
    out = pixel_dependent_filter(*args, None, weight.to(device), bias.to(device))
    assert out.dtype == dtype and out.device.type == device and out.shape == (2, 3, 5, 4)
    deformable = pixel_dependent_filter(*args, zeros.to(device), weight.to(device), bias.to(device))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, deformable, rtol=tolerance, atol=tolerance)
    expected = reference_pdf(x, kernel_weights, zeros, weight, bias)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=tolerance, atol=tolerance)
    # row chunks (here one row of 2 * B * Cin * K*K values at a time) give the same result
    chunked = pixel_dependent_filter(*args, None, weight.to(device), bias.to(device), max_chunk_bytes=1)
    torch.testing.assert_close(chunked, out, rtol=tolerance, atol=tolerance)
    assert not torch.allclose(out, F.conv2d(*args[:1], weight.to(device), bias.to(device), padding=size // 2))


def test_without_offsets_gradcheck_float64():
    x, kernel_weights, _, weight, bias = (t.requires_grad_() for t in _case(batch=1, height=3, width=4))
    assert torch.autograd.gradcheck(
        lambda *t: pixel_dependent_filter(t[0], t[1], None, t[2], t[3], max_chunk_bytes=1),
        (x, kernel_weights, weight, bias),
    )


def test_reference_is_not_trivially_satisfied():
    x, kernel_weights, offsets, weight, bias = _case()
    expected = reference_pdf(x, kernel_weights, offsets, weight, bias)
    plain = F.conv2d(x, weight, bias, padding=1)
    assert (expected - plain).abs().max() > 0.5  # V and the offsets matter
    shifted = offsets.clone()
    shifted[:, 1::2] += 0.3  # dx only
    assert not torch.allclose(pixel_dependent_filter(x, kernel_weights, shifted, weight, bias), expected, atol=1e-3)


def test_kernel_weights_and_offsets_are_shared_over_channels():
    """Per tap one V and one offset for every input channel: channels filter independently."""
    x, kernel_weights, offsets, weight, _ = _case(cin=2, cout=2)
    diagonal = weight.clone()
    diagonal[0, 1] = 0
    diagonal[1, 0] = 0
    out = pixel_dependent_filter(x, kernel_weights, offsets, diagonal)
    for c in range(2):
        alone = pixel_dependent_filter(x[:, c : c + 1], kernel_weights, offsets, diagonal[c : c + 1, c : c + 1])
        torch.testing.assert_close(out[:, c : c + 1], alone, rtol=1e-10, atol=1e-12)


def test_integer_offsets_shift_the_input():
    """Every tap moved by the same integer (dx, dy) = a conv of the shifted (zero-filled) input."""
    x, _, _, weight, bias = _case(height=6, width=7)
    offsets = torch.zeros(2, 18, 6, 7, dtype=torch.float64)
    offsets[:, 0::2], offsets[:, 1::2] = -1.0, 2.0  # dy = -1 (up), dx = +2 (right)
    out = pixel_dependent_filter(x, torch.ones(2, 9, 6, 7, dtype=torch.float64), offsets, weight, bias)
    # out[y, x] = sum_k W[k] x[y - 1 + ky - 1, x + 2 + kx - 1]: a valid conv of x zero-padded by 3, at (y + 1, x + 4)
    expected = F.conv2d(F.pad(x, (3, 3, 3, 3)), weight, bias)[:, :, 1 : 1 + 6, 4 : 4 + 7]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_gradcheck_float64():
    x, kernel_weights, offsets, weight, bias = (t.requires_grad_() for t in _case(batch=1, height=3, width=3))
    assert torch.autograd.gradcheck(pixel_dependent_filter, (x, kernel_weights, offsets, weight, bias))
    module = PixelDependentFilter(2, 2, kernel_size=3, max_displacement=1.5).double()
    with torch.no_grad():
        module.meta.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(module, (x.detach().requires_grad_(),))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("adaptive_kernel", "learn_offsets"), SWITCHES)
def test_at_initialisation_it_is_a_normal_conv(adaptive_kernel, learn_offsets, dtype, device):
    pdf = PixelDependentFilter(4, 6, kernel_size=5, adaptive_kernel=adaptive_kernel, learn_offsets=learn_offsets)
    pdf = pdf.to(device=device, dtype=dtype)
    conv = torch.nn.Conv2d(4, 6, 5, padding=2).to(device=device, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(pdf.weight)
        conv.bias.copy_(pdf.bias)
    x = torch.rand(2, 4, 7, 6, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    y, offsets = pdf(x, return_offsets=True)
    assert y.dtype == dtype and y.device.type == device
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)
    assert offsets.shape == (2, 50, 7, 6) and not offsets.any()


def _trained_like(adaptive_kernel=True, learn_offsets=True, max_displacement=1.5, scale=3.0):
    """A PDF whose meta-layer has large random weights (far from its zero initialisation)."""
    pdf = PixelDependentFilter(
        3, 2, kernel_size=3, max_displacement=max_displacement,
        adaptive_kernel=adaptive_kernel, learn_offsets=learn_offsets,
    ).double()  # fmt: skip
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        pdf.meta.weight.copy_(torch.randn(pdf.meta.weight.shape, generator=g, dtype=torch.float64) * scale)
        pdf.meta.bias.copy_(torch.randn(pdf.meta.bias.shape, generator=g, dtype=torch.float64) * scale)
    return pdf


def test_module_is_eq_11_with_bounded_offsets():
    pdf = _trained_like()
    x = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y, offsets = pdf(x, return_offsets=True)
    raw = F.conv2d(x, pdf.meta.weight, pdf.meta.bias, padding=1)
    kernel_weights = 2 * torch.sigmoid(raw[:, :9])  # V = 2 sigmoid, in (0, 2)
    torch.testing.assert_close(offsets, 1.5 * torch.tanh(raw[:, 9:]))
    assert offsets.abs().max() <= 1.5 and offsets.abs().max() > 1.0  # bounded by max_displacement, and used
    torch.testing.assert_close(y, reference_pdf(x, kernel_weights, offsets, pdf.weight.detach(), pdf.bias.detach()))


def test_switches():
    x = torch.randn(1, 3, 5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # adaptive_kernel=False: V = 1, offsets learned
    pdf = _trained_like(adaptive_kernel=False)
    assert pdf.meta.out_channels == 18
    y, offsets = pdf(x, return_offsets=True)
    assert offsets.abs().max() > 0.5
    ones = torch.ones(1, 9, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(y, reference_pdf(x, ones, offsets, pdf.weight.detach(), pdf.bias.detach()))
    # learn_offsets=False (SAPHNet (a)): offsets 0, V learned
    pdf = _trained_like(learn_offsets=False)
    assert pdf.meta.out_channels == 9
    y, offsets = pdf(x, return_offsets=True)
    assert not offsets.any()
    kernel_weights = 2 * torch.sigmoid(F.conv2d(x, pdf.meta.weight, pdf.meta.bias, padding=1))
    torch.testing.assert_close(y, reference_pdf(x, kernel_weights, offsets, pdf.weight.detach(), pdf.bias.detach()))
    assert not torch.allclose(y, F.conv2d(x, pdf.weight, pdf.bias, padding=1), atol=1e-3)
    # both off: a plain conv, no meta-layer
    plain = PixelDependentFilter(3, 2, kernel_size=3, adaptive_kernel=False, learn_offsets=False)
    assert plain.meta is None and sum(p.numel() for p in plain.parameters()) == 2 * 3 * 9 + 2
    assert "learn_offsets=False" in repr(plain)


@pytest.mark.parametrize(("adaptive_kernel", "learn_offsets"), SWITCHES)
def test_macs_reported_to_the_profiler(adaptive_kernel, learn_offsets):
    pdf = PixelDependentFilter(4, 6, kernel_size=5, adaptive_kernel=adaptive_kernel, learn_offsets=learn_offsets)
    x = torch.rand(2, 4, 6, 7)
    pixels = 2 * 6 * 7
    meta = pixels * 25 * (adaptive_kernel + 2 * learn_offsets) * 4 * 9
    if learn_offsets:  # the deformable path: the conv and 4 MACs per bilinear sample
        conv = deform_conv2d_macs(4, 6, 5, pixels)
    else:  # im2col (V per tap and channel, then the conv) or, with V = 1 too, a plain conv
        conv = pixels * 25 * 4 * (6 + adaptive_kernel)
    assert count_macs(pdf, x).total == meta + conv == pdf.macs_of_last_call
    assert (
        pixel_dependent_filter_macs(4, 6, 5, pixels, adaptive_kernel=adaptive_kernel, learn_offsets=learn_offsets)
        == meta + conv
    )


def test_bad_inputs_raise_clear_errors():
    x, kernel_weights, offsets, weight, _ = _case()
    with pytest.raises(ValueError, match="x must be"):
        pixel_dependent_filter(x[0], kernel_weights, offsets, weight)
    with pytest.raises(ValueError, match="weight must be"):
        pixel_dependent_filter(x, kernel_weights, offsets, weight[:, :1])
    with pytest.raises(ValueError, match="K odd"):
        pixel_dependent_filter(x, kernel_weights, offsets, torch.rand(3, 2, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="kernel_weights"):
        pixel_dependent_filter(x, kernel_weights[:, :4], offsets, weight)
    with pytest.raises(ValueError, match="offsets"):
        pixel_dependent_filter(x, kernel_weights, offsets[..., :3], weight)
    with pytest.raises(ValueError, match="kernel_size"):
        PixelDependentFilter(4, kernel_size=4)
    with pytest.raises(ValueError, match="max_displacement"):
        PixelDependentFilter(4, max_displacement=0)
    with pytest.raises(ValueError, match=r"x must be \(B, 4, H, W\)"):
        PixelDependentFilter(4)(torch.rand(1, 3, 5, 5))


# ---------------------------------------------------------------------------------------------------
# Offset directions


def _offsets_from_xy(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W) per-tap dx, dy -> deform_conv2d's (B, 2T, H, W) (dy, dx) layout."""
    return torch.stack((dy, dx), 2).flatten(1, 2)


def test_mean_direction_uses_x_right_y_down():
    dx = torch.tensor([1.0, 3.0, 2.0]).view(1, 3, 1, 1)
    dy = torch.tensor([-2.0, 0.0, -1.0]).view(1, 3, 1, 1)
    direction = dominant_offset_direction(_offsets_from_xy(dx, dy))
    assert direction.shape == (1, 2, 1, 1)
    assert direction.flatten().tolist() == [2.0, -1.0]  # channel 0 = mean dx, channel 1 = mean dy


@pytest.mark.parametrize("angle", [0.0, 11.0, 45.0, 90.0, 126.0, 135.0, 179.0])
def test_axis_direction_of_a_line_spread(angle):
    """Taps spread symmetrically along a line at `angle` (counter-clockwise on screen): the mean is 0,
    the axis finds the line, direction_to_degrees gives the angle back."""
    radians = math.radians(angle)
    along = torch.linspace(-2, 2, 25, dtype=torch.float64).view(1, 25, 1, 1)
    across = 0.1 * torch.cos(torch.arange(25, dtype=torch.float64)).view(1, 25, 1, 1)  # a little isotropic noise
    dx = along * math.cos(radians) - across * math.sin(radians)
    dy = -(along * math.sin(radians) + across * math.cos(radians))  # y down: screen-up is negative y
    offsets = _offsets_from_xy(dx, dy)
    assert dominant_offset_direction(offsets).abs().max() < 0.05  # symmetric: no mean direction
    axis = dominant_offset_direction(offsets, mode="axis")
    assert axis[0, 1].item() <= 0  # upper half plane, as seen on screen
    measured = direction_to_degrees(axis, axial=True).item()
    assert min(abs(measured - angle), 180 - abs(measured - angle)) < 1.0
    assert 0 <= measured < 180


def test_axis_length_is_zero_for_an_isotropic_spread():
    taps = torch.arange(-2.0, 3.0)
    dy, dx = torch.meshgrid(taps, taps, indexing="ij")  # the 5x5 grid itself: no preferred direction
    offsets = _offsets_from_xy(dx.reshape(1, 25, 1, 1), dy.reshape(1, 25, 1, 1))
    assert dominant_offset_direction(offsets, mode="axis").abs().max() < 1e-6


def test_direction_to_degrees():
    # rightwards, up-right, up, up-left, left, down (x right, y down)
    direction = torch.tensor([[1, 0], [1, -1], [0, -1], [-1, -1], [-1, 0], [0, 1]], dtype=torch.float32)
    degrees = direction_to_degrees(direction.view(6, 2, 1, 1)).flatten().tolist()
    assert degrees == pytest.approx([0.0, 45.0, 90.0, 135.0, 180.0, -90.0])
    axial = direction_to_degrees(direction.view(6, 2, 1, 1), axial=True).flatten().tolist()
    assert axial == pytest.approx([0.0, 45.0, 90.0, 135.0, 0.0, 90.0])
    with pytest.raises(ValueError, match="direction"):
        direction_to_degrees(torch.rand(1, 3, 2, 2))
    with pytest.raises(ValueError, match="mode"):
        dominant_offset_direction(torch.rand(1, 2, 2, 2), mode="median")
    with pytest.raises(ValueError, match="offsets"):
        dominant_offset_direction(torch.rand(1, 3, 2, 2))
