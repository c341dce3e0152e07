"""deform_conv2d and its sampling plans against a per-pixel Python loop (slow, obviously correct)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import bilinear_sample

from adeblur.ops import (
    DeformConv2d,
    build_sampling_plan,
    deform_conv2d,
    deform_conv2d_macs,
    deform_conv2d_planned,
    gather_pixels,
    mask_to_pixel_index,
    scatter_pixels,
    torchvision_deform_conv2d_usable,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def reference_deform_conv2d(input, offset, weight, bias=None, mask=None, stride=1, padding=0, dilation=1):
    """Textbook DCNv2, one output value at a time (torchvision's definition)."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    batch, in_channels, height, width = input.shape
    out_channels, in_per_group, kh, kw = weight.shape
    taps = kh * kw
    groups = in_channels // in_per_group
    out_per_group = out_channels // groups
    offset_groups = offset.shape[1] // (2 * taps)
    channels_per_offset_group = in_channels // offset_groups
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x, off, w = input.double().tolist(), offset.double().tolist(), weight.double().tolist()
    m = None if mask is None else mask.double().tolist()
    b_ = None if bias is None else bias.double().tolist()
    out = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float64)
    for b in range(batch):
        for co in range(out_channels):
            group = co // out_per_group
            for oy in range(out_h):
                for ox in range(out_w):
                    acc = 0.0 if b_ is None else b_[co]
                    for c_local in range(in_per_group):
                        ci = group * in_per_group + c_local
                        og = ci // channels_per_offset_group
                        for i in range(kh):
                            for j in range(kw):
                                k = og * taps + i * kw + j
                                y = oy * sh - ph + i * dh + off[b][2 * k][oy][ox]
                                xx = ox * sw - pw + j * dw + off[b][2 * k + 1][oy][ox]
                                value = bilinear_sample(x[b][ci], y, xx)
                                if m is not None:
                                    value *= m[b][k][oy][ox]
                                acc += w[co][c_local][i][j] * value
                    out[b, co, oy, ox] = acc
    return out


# (batch, cin, cout, H, W, kernel, stride, padding, dilation, groups, offset_groups, mask, offset scale)
CASES = {
    "plain": (2, 3, 4, 5, 6, (3, 3), 1, 1, 1, 1, 1, False, 1.5),
    "modulated": (2, 3, 4, 5, 6, (3, 3), 1, 1, 1, 1, 1, True, 1.5),
    "groups+offset_groups": (1, 4, 6, 5, 5, (3, 3), 1, 1, 1, 2, 2, True, 1.5),
    "depthwise": (2, 4, 4, 6, 5, (3, 3), 1, 1, 1, 4, 1, True, 1.5),
    "depthwise_offset_groups": (1, 4, 4, 5, 6, (3, 3), 1, 1, 1, 4, 2, False, 1.5),
    "depthwise_multiplier": (1, 2, 4, 5, 5, (3, 3), 1, 1, 1, 2, 1, True, 1.5),
    "stride_dilation_rect": (2, 3, 2, 7, 8, (3, 2), (2, 1), (1, 0), (2, 1), 1, 1, True, 1.5),
    "outside_image": (1, 2, 3, 4, 5, (3, 3), 1, 1, 1, 1, 1, True, 6.0),
}


def _case(name, device, dtype, seed=0):
    batch, cin, cout, h, w, kernel, stride, padding, dilation, groups, offset_groups, use_mask, scale = CASES[name]
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x = torch.rand(batch, cin, h, w, generator=g, dtype=torch.float64)
    offset = (torch.rand(batch, 2 * offset_groups * kh * kw, out_h, out_w, generator=g, dtype=torch.float64) - 0.5)
    offset = offset * 2 * scale
    weight = torch.randn(cout, cin // groups, kh, kw, generator=g, dtype=torch.float64) * 0.5
    bias = torch.randn(cout, generator=g, dtype=torch.float64)
    mask_shape = (batch, offset_groups * kh * kw, out_h, out_w)
    mask = torch.rand(mask_shape, generator=g, dtype=torch.float64) if use_mask else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    tensors = [t if t is None else t.to(device=device, dtype=dtype) for t in (x, offset, weight, bias, mask)]
    return tensors, kwargs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_per_pixel_loop(name, device, dtype):
    (x, offset, weight, bias, mask), kwargs = _case(name, device, dtype)
    expected = reference_deform_conv2d(x.cpu(), offset.cpu(), weight.cpu(), bias.cpu(), mask, **kwargs)
    out = deform_conv2d(x, offset, weight, bias, mask=None if mask is None else mask, backend="torch", **kwargs)
    assert out.dtype == dtype and out.device.type == device
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=0)


def test_reference_is_not_trivially_satisfied():
    """The comparison must fail when the semantics are wrong (swapped dy/dx)."""
    (x, offset, weight, bias, mask), kwargs = _case("modulated", "cpu", torch.float64)
    expected = reference_deform_conv2d(x, offset, weight, bias, mask, **kwargs)
    swapped = offset.view(offset.shape[0], -1, 2, *offset.shape[2:]).flip(2).reshape(offset.shape)
    out = deform_conv2d(x, swapped, weight, bias, mask=mask, backend="torch", **kwargs)
    assert (out - expected).abs().max() > 1e-2


@pytest.mark.parametrize("shift", [(0, 0), (1, -2), (-3, 1)])
def test_integer_offsets_are_a_shifted_conv(shift):
    dy, dx = shift
    g = torch.Generator().manual_seed(1)
    x, weight = torch.rand(2, 3, 7, 8, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    offset = torch.zeros(2, 18, 7, 8)
    offset[:, 0::2], offset[:, 1::2] = dy, dx
    out = deform_conv2d(x, offset, weight, padding=1, backend="torch")
    # every tap reads z + p + (dy, dx): the plain conv centred at z + (dy, dx), zeros outside the image
    centred = F.conv2d(F.pad(x, (4, 4, 4, 4)), weight)  # centre of output u is input row/col u - 3
    expected = centred[:, :, 3 + dy : 3 + dy + 7, 3 + dx : 3 + dx + 8]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_chunking_does_not_change_the_result():
    (x, offset, weight, bias, mask), kwargs = _case("modulated", "cpu", torch.float32)
    whole = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", **kwargs)
    tiny = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", max_chunk_bytes=1, **kwargs)
    torch.testing.assert_close(tiny, whole, atol=1e-6, rtol=0)


def test_gradcheck_float64():
    """input, offset, mask, weight and bias, with groups and offset groups, stride and dilation."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 4, 4, 5, generator=g, dtype=torch.float64)
    offset = (torch.rand(1, 2 * 2 * 9, 2, 3, generator=g, dtype=torch.float64) - 0.5) * 3
    mask = torch.rand(1, 2 * 9, 2, 3, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(2, generator=g, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, offset, mask, weight, bias))

    def fn(x, offset, mask, weight, bias):
        return deform_conv2d(x, offset, weight, bias, mask=mask, stride=(2, 1), padding=1, dilation=(1, 2),
                             backend="torch")  # fmt: skip

    assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_depthwise_plan_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    offset = ((torch.rand(1, 18, 4, 4, generator=g, dtype=torch.float64) - 0.5) * 3).requires_grad_()
    mask = torch.rand(1, 9, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x, offset, mask, weight):
        plan = build_sampling_plan(offset, (4, 4), 3, mask=mask, padding=1)
        return deform_conv2d_planned(x, plan, weight)

    assert torch.autograd.gradcheck(fn, (x, offset, mask, weight))


def test_plan_reuse_equals_direct_call():
    (x, offset, weight, bias, mask), kwargs = _case("depthwise", "cpu", torch.float32)
    plan = build_sampling_plan(offset, x.shape[2:], weight.shape[2:], mask=mask, **kwargs)
    direct = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", **kwargs)
    torch.testing.assert_close(deform_conv2d_planned(x, plan, weight, bias), direct, atol=1e-6, rtol=0)
    other = torch.rand_like(x)  # a second convolution sharing the plan
    torch.testing.assert_close(
        deform_conv2d_planned(other, plan, weight * 2),
        deform_conv2d(other, offset, weight * 2, mask=mask, backend="torch", **kwargs), atol=1e-6, rtol=0,
    )  # fmt: skip


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_subset_plan_computes_only_selected_pixels(layout):
    (x, offset, weight, bias, mask), kwargs = _case("depthwise", "cpu", torch.float32)
    x = x.contiguous(memory_format=layout)
    blur = (torch.rand(x.shape[0], 1, *x.shape[2:], generator=torch.Generator().manual_seed(5)) > 0.6).float()
    pixels = mask_to_pixel_index(blur)
    plan = build_sampling_plan(offset, x.shape[2:], 3, mask=mask, pixel_index=pixels, **kwargs)
    assert plan.num_pixels == int(blur.sum())
    background = torch.full((x.shape[0], 4, *x.shape[2:]), -7.0)
    out = deform_conv2d_planned(x, plan, weight, bias, background=background)
    full = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", **kwargs)
    torch.testing.assert_close(out, torch.where(blur.bool(), full, background), atol=1e-6, rtol=0)
    zeros_elsewhere = deform_conv2d_planned(x, plan, weight, bias)
    torch.testing.assert_close(zeros_elsewhere, full * blur, atol=1e-6, rtol=0)


def test_gather_scatter_pixels_round_trip():
    x = torch.rand(2, 3, 4, 5)
    pixels = torch.tensor([0, 7, 19, 20, 39])
    rows = gather_pixels(x, pixels)
    assert torch.equal(rows[1], x[0, :, 1, 2]) and torch.equal(rows[3], x[1, :, 0, 0])
    for layout in (torch.contiguous_format, torch.channels_last):
        out = scatter_pixels(torch.zeros_like(x).contiguous(memory_format=layout), pixels, rows)
        assert out.is_contiguous(memory_format=layout)
        expected = torch.zeros_like(x).view(2, 3, 20)
        expected[pixels // 20, :, pixels % 20] = rows
        assert torch.equal(out, expected.view_as(x))


def test_module_with_offset_and_with_plan():
    torch.manual_seed(0)
    layer = DeformConv2d(4, 4, 3, padding=1, groups=4)
    x, offset = torch.rand(1, 4, 5, 5), torch.randn(1, 18, 5, 5)
    by_offset = layer(x, offset)
    plan = build_sampling_plan(offset, (5, 5), 3, padding=1)
    torch.testing.assert_close(layer(x, plan=plan), by_offset)
    expected = reference_deform_conv2d(x, offset, layer.weight.detach(), layer.bias.detach(), padding=1)
    torch.testing.assert_close(by_offset.double(), expected, atol=1e-5, rtol=0)
    unpadded_plan = build_sampling_plan(torch.zeros(1, 18, 3, 3), (5, 5), 3)
    with pytest.raises(ValueError, match="geometry"):
        layer(x, plan=unpadded_plan)


def test_bad_inputs_raise_clear_errors():
    x, w = torch.rand(1, 4, 5, 5), torch.rand(4, 1, 3, 3)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(x, torch.zeros(1, 17, 5, 5), w, padding=1, backend="torch")
    with pytest.raises(ValueError, match="mask"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), w, mask=torch.ones(1, 8, 5, 5), padding=1, backend="torch")
    with pytest.raises(ValueError, match="weight"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), torch.rand(4, 3, 3, 3), padding=1, backend="torch")
    with pytest.raises(ValueError, match="backend"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), w, padding=1, backend="cuda-magic")
    plan = build_sampling_plan(torch.zeros(1, 18, 5, 5), (5, 5), 3, padding=1)
    with pytest.raises(ValueError, match="plan was built"):
        deform_conv2d_planned(torch.rand(1, 4, 6, 5), plan, w)


def test_macs():
    # depthwise 3x3 on 64 channels: 9 MACs of convolution + 9 * 4 of bilinear sampling per channel
    assert deform_conv2d_macs(64, 64, 3, 10, groups=64) == 10 * 64 * (9 + 36)
    # dense 3x3, 8 -> 16 channels, 2 groups: 16 * 4 * 9 conv + 8 * 9 * 4 sampling per pixel
    assert deform_conv2d_macs(8, 16, (3, 3), 5, groups=2) == 5 * (16 * 4 * 9 + 8 * 9 * 4)


def test_torchvision_agreement():
    if not torchvision_deform_conv2d_usable("cpu"):
        pytest.skip("torchvision.ops.deform_conv2d does not import or does not run here")
    for name in CASES:
        (x, offset, weight, bias, mask), kwargs = _case(name, "cpu", torch.float64)
        ours = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", **kwargs)
        theirs = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torchvision", **kwargs)
        torch.testing.assert_close(ours, theirs, atol=1e-9, rtol=0)


def _fake_torchvision(monkeypatch, kernel):
    """Install a stand-in ``torchvision.ops`` whose deform_conv2d is ``kernel``; clear the probe cache."""
    import sys
    import types

    from adeblur.ops import deform_conv as module

    package, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.deform_conv2d = kernel
    package.ops = ops
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.ops", ops)
    module._torchvision_kernel.cache_clear()
    return module


def test_torchvision_probe_uses_a_working_kernel_and_rejects_a_wrong_one(monkeypatch):
    calls = []

    def working(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
        calls.append(input.shape)
        return deform_conv2d(input, offset, weight, bias, mask=mask, stride=stride, padding=padding,
                             dilation=dilation, backend="torch")  # fmt: skip

    module = _fake_torchvision(monkeypatch, working)
    try:
        assert torchvision_deform_conv2d_usable("cpu")
        probes = len(calls)
        (x, offset, weight, bias, mask), kwargs = _case("modulated", "cpu", torch.float32)
        out = deform_conv2d(x, offset, weight, bias, mask=mask, **kwargs)  # auto -> "torchvision"
        assert len(calls) == probes + 1
        assert torchvision_deform_conv2d_usable("cpu") and len(calls) == probes + 1  # probed once, cached
        torch.testing.assert_close(out, deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", **kwargs))

        _fake_torchvision(monkeypatch, lambda input, *args, **kwargs: torch.zeros_like(input))  # wrong answers
        assert not torchvision_deform_conv2d_usable("cpu")
        deform_conv2d(x, offset, weight, bias, mask=mask, **kwargs)  # auto falls back to torch
        with pytest.raises(ValueError, match="not usable"):
            deform_conv2d(x, offset, weight, bias, mask=mask, backend="torchvision", **kwargs)
    finally:
        module._torchvision_kernel.cache_clear()
