"""Mask-aware convolution (Eq. 5): pruned path == dense path at every pixel, against a loop reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adeblur.ops import MaskAwareConv, mask_aware_conv, mask_aware_conv_macs, repeat_channels

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def _weights(channels, expand, kernel, generator, dtype=torch.float32, bias_scale=1.0):
    expanded = channels * expand
    return (
        torch.randn(expanded, channels, 1, 1, generator=generator, dtype=dtype),
        torch.randn(expanded, generator=generator, dtype=dtype) * bias_scale,
        torch.randn(expanded, 1, kernel, kernel, generator=generator, dtype=dtype) * 0.5,
        torch.randn(expanded, generator=generator, dtype=dtype),
    )


def reference_mask_aware_conv(f1, mask, pw, pb, dw, db, order="tile"):
    """Per pixel: blurred -> 1x1 on each in-image neighbour (zero outside), then depthwise; else Rep."""
    batch, channels, height, width = f1.shape
    expanded, kernel = pw.shape[0], dw.shape[-1]
    radius = kernel // 2
    out = repeat_channels(f1, expanded // channels, order).double().clone()
    f1, pw, pb, dw, db = (t.double() for t in (f1, pw, pb, dw, db))
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                if mask[b, 0, y, x] < 0.5:
                    continue
                value = db.clone()
                for i in range(kernel):
                    for j in range(kernel):
                        yy, xx = y + i - radius, x + j - radius
                        if 0 <= yy < height and 0 <= xx < width:
                            pointwise = pw[:, :, 0, 0] @ f1[b, :, yy, xx] + pb
                            value += dw[:, 0, i, j] * pointwise
                out[b, :, y, x] = value
    return out


def _masks(batch, height, width, generator):
    """Empty, full, border-only, single corner pixels, sparse random and blobs."""
    masks = [torch.zeros(batch, 1, height, width), torch.ones(batch, 1, height, width)]
    border = torch.zeros(batch, 1, height, width)
    border[..., 0, :], border[..., -1, :], border[..., :, 0], border[..., :, -1] = 1, 1, 1, 1
    masks.append(border)
    corners = torch.zeros(batch, 1, height, width)
    corners[..., 0, 0], corners[..., -1, -1], corners[..., 0, -1] = 1, 1, 1
    masks.append(corners)
    for fraction in (0.02, 0.1, 0.3, 0.7):
        masks.append((torch.rand(batch, 1, height, width, generator=generator) < fraction).float())
    blobs = F.max_pool2d((torch.rand(batch, 1, height, width, generator=generator) < 0.03).float(), 5, 1, 2)
    masks.append(blobs)
    different = masks[-2].clone()
    different[0] = 0  # batch elements with different (one empty) masks
    masks.append(different)
    return masks


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("order", ["tile", "interleave"])
def test_pruned_equals_dense_on_many_masks(order, layout):
    g = torch.Generator().manual_seed(0)
    batch, channels, height, width = 3, 4, 9, 11
    f1 = torch.randn(batch, channels, height, width, generator=g).contiguous(memory_format=layout)
    weights = _weights(channels, 2, 3, g, bias_scale=10.0)  # large 1x1 bias: would show any border leak
    for mask in _masks(batch, height, width, g):
        dense = mask_aware_conv(f1, mask, *weights, repeat_order=order)
        pruned = mask_aware_conv(f1, mask, *weights, pruned=True, repeat_order=order)
        torch.testing.assert_close(pruned, dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", [3, 5])
def test_both_paths_match_per_pixel_loop(kernel, device, dtype):
    g = torch.Generator().manual_seed(1)
    f1 = torch.randn(2, 3, 6, 7, generator=g)
    mask = (torch.rand(2, 1, 6, 7, generator=g) < 0.4).float()
    mask[0, 0, 0, 0] = mask[1, 0, 5, 6] = 1  # border pixels
    weights = _weights(3, 2, kernel, g, bias_scale=5.0)
    expected = reference_mask_aware_conv(f1, mask, *weights)
    moved = [t.to(device, dtype) for t in (f1, mask, *weights)]
    for pruned in (False, True):
        out = mask_aware_conv(*moved, pruned=pruned)
        assert out.dtype == dtype and out.shape == (2, 6, 6, 7)
        torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=0)


def test_reference_detects_a_leaking_bias():
    """Sanity check of the oracle: padding the 1x1 *input* (bias leaks into the border) differs."""
    g = torch.Generator().manual_seed(2)
    f1, mask = torch.randn(1, 2, 5, 5, generator=g), torch.ones(1, 1, 5, 5)
    pw, pb, dw, db = _weights(2, 2, 3, g, bias_scale=10.0)
    leaky = F.conv2d(F.conv2d(F.pad(f1, (1, 1, 1, 1)), pw, pb), dw, db, groups=4)
    assert (leaky - reference_mask_aware_conv(f1, mask, pw, pb, dw, db)).abs().max() > 1.0


def test_unmasked_pixels_are_the_repeated_input():
    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(1, 3, 4, 4, generator=g)
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1, 1] = 1
    for order, expected_channels in (("tile", [0, 1, 2, 0, 1, 2]), ("interleave", [0, 0, 1, 1, 2, 2])):
        out = mask_aware_conv(f1, mask, *_weights(3, 2, 3, g), pruned=True, repeat_order=order)
        assert torch.equal(out[0, :, 3, 3], f1[0, expected_channels, 3, 3])


def test_gradients_of_pruned_match_dense():
    g = torch.Generator().manual_seed(4)
    f1 = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, 1, 5, 6, generator=g) < 0.4).double()
    weights = _weights(3, 2, 3, g, dtype=torch.float64)
    grads = []
    for pruned in (False, True):
        inputs = [t.clone().requires_grad_() for t in (f1, *weights)]
        mask_aware_conv(inputs[0], mask, *inputs[1:], pruned=pruned).square().sum().backward()
        grads.append([t.grad for t in inputs])
    for dense_grad, pruned_grad in zip(*grads):
        torch.testing.assert_close(pruned_grad, dense_grad)


def test_dense_path_is_differentiable_wrt_mask():
    """Straight-through masks: d f2 / d m = Conv(f1) - Rep(f1)."""
    g = torch.Generator().manual_seed(5)
    f1 = torch.randn(1, 2, 4, 4, generator=g)
    mask = (torch.rand(1, 1, 4, 4, generator=g) < 0.5).float().requires_grad_()
    pw, pb, dw, db = _weights(2, 2, 3, g)
    mask_aware_conv(f1, mask, pw, pb, dw, db).sum().backward()
    convolved = F.conv2d(F.conv2d(f1, pw, pb), dw, db, padding=1, groups=4)
    expected = (convolved - repeat_channels(f1)).sum(1, keepdim=True)
    torch.testing.assert_close(mask.grad, expected)


def test_module():
    torch.manual_seed(0)
    layer = MaskAwareConv(4, kernel_size=3)
    assert layer.pointwise.weight.shape == (8, 4, 1, 1) and layer.depthwise.weight.shape == (8, 1, 3, 3)
    f1, mask = torch.randn(2, 4, 8, 8), (torch.rand(2, 1, 8, 8) < 0.2).float()
    with torch.no_grad():
        torch.testing.assert_close(layer(f1, mask, pruned=True), layer(f1, mask, pruned=False), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="repeat order"):
        MaskAwareConv(4, repeat_order="shuffle")
    with pytest.raises(ValueError, match="mask"):
        layer(f1, mask[:, :, :4])


def test_macs_fall_with_the_mask():
    mask = torch.zeros(1, 1, 20, 20)
    mask[0, 0, 5:10, 5:10] = 1  # 25 blurred pixels, 49 after dilation by one
    dense = mask_aware_conv_macs(mask, 8, pruned=False)
    assert dense == 400 * (8 * 16 + 9 * 16)
    assert mask_aware_conv_macs(mask, 8) == 49 * 8 * 16 + 25 * 9 * 16
    assert mask_aware_conv_macs(torch.zeros(1, 1, 20, 20), 8) == 0
    assert mask_aware_conv_macs(torch.ones(1, 1, 20, 20), 8) == dense
