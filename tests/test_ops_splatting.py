"""Forward warping by average / softmax splatting against a per-pixel Python loop."""

from __future__ import annotations

import math

import pytest
import torch

from adeblur.ops import ForwardWarp, forward_warp, forward_warp_macs

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def reference_forward_warp(image, flow, importance=None):
    """Push every source pixel to its 4 bilinear neighbours, one at a time; normalise; keep the source."""
    batch, channels, height, width = image.shape
    img, fl = image.double().tolist(), flow.double().tolist()
    z = None if importance is None else importance.double().tolist()
    out = image.double().clone()
    for b in range(batch):
        numerator = [[[0.0] * width for _ in range(height)] for _ in range(channels)]
        total = [[0.0] * width for _ in range(height)]
        for y in range(height):
            for x in range(width):
                weight = 1.0 if z is None else math.exp(z[b][0][y][x])
                tx, ty = x + fl[b][0][y][x], y + fl[b][1][y][x]
                x0, y0 = math.floor(tx), math.floor(ty)
                for yy, wy in ((y0, 1 - (ty - y0)), (y0 + 1, ty - y0)):
                    for xx, wx in ((x0, 1 - (tx - x0)), (x0 + 1, tx - x0)):
                        if 0 <= yy < height and 0 <= xx < width:
                            total[yy][xx] += weight * wy * wx
                            for c in range(channels):
                                numerator[c][yy][xx] += weight * wy * wx * img[b][c][y][x]
        for y in range(height):
            for x in range(width):
                if total[y][x] > 0:
                    for c in range(channels):
                        out[b, c, y, x] = numerator[c][y][x] / total[y][x]
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["average", "softmax"])
def test_matches_per_pixel_loop(mode, device, dtype):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 6, 7, generator=g)
    flow = (torch.rand(2, 2, 6, 7, generator=g) - 0.5) * 5  # some land outside, some pixels get nothing
    importance = torch.randn(2, 1, 6, 7, generator=g) * 2 if mode == "softmax" else None
    expected = reference_forward_warp(image, flow, importance)
    out = forward_warp(image.to(device, dtype), flow.to(device, dtype), mode=mode,
                       importance=None if importance is None else importance.to(device, dtype))  # fmt: skip
    assert out.dtype == dtype and out.shape == image.shape
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [(2, -1), (-3, 0), (0, 0)])
def test_integer_flow_is_a_shift(shift):
    dx, dy = shift
    image = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    flow = torch.zeros(2, 2, 5, 6)
    flow[:, 0], flow[:, 1] = dx, dy
    expected = image.clone()  # uncovered pixels keep their own value
    expected[:, :, max(0, dy) : 5 + min(0, dy), max(0, dx) : 6 + min(0, dx)] = image[
        :, :, max(0, -dy) : 5 - max(0, dy), max(0, -dx) : 6 - max(0, dx)
    ]
    torch.testing.assert_close(forward_warp(image, flow), expected)


def test_softmax_importance_decides_collisions():
    image = torch.tensor([[[[1.0, 5.0]]]])
    flow = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])  # pixel 0 lands on pixel 1, which stays
    importance = torch.tensor([[[[10.0, 0.0]]]])
    averaged = forward_warp(image, flow)
    assert averaged.flatten().tolist() == [1.0, 3.0]  # pixel 0: nothing lands, keeps 1
    favoured = forward_warp(image, flow, mode="softmax", importance=importance)
    assert favoured[0, 0, 0, 1].item() == pytest.approx((math.exp(10) * 1 + 5) / (math.exp(10) + 1))
    huge = forward_warp(image, flow, mode="softmax", importance=importance * 1000)  # no overflow
    assert torch.isfinite(huge).all() and huge[0, 0, 0, 1].item() == pytest.approx(1.0)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    flow = ((torch.rand(1, 2, 3, 4, generator=g, dtype=torch.float64) - 0.5) * 3).requires_grad_()
    importance = torch.randn(1, 1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, f: forward_warp(i, f), (image, flow))
    assert torch.autograd.gradcheck(
        lambda i, f, z: forward_warp(i, f, mode="softmax", importance=z), (image, flow, importance)
    )


def test_module_and_errors():
    image, flow = torch.rand(1, 3, 4, 4), torch.zeros(1, 2, 4, 4)
    torch.testing.assert_close(ForwardWarp()(image, flow), image)
    with pytest.raises(ValueError, match="importance"):
        forward_warp(image, flow, mode="softmax")
    with pytest.raises(ValueError, match="importance"):
        forward_warp(image, flow, importance=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="flow"):
        forward_warp(image, torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="mode"):
        ForwardWarp("nearest")


def test_macs():
    assert forward_warp_macs(2, 3, 4, 5) == 2 * 4 * 5 * (4 * 4 + 3)
    assert forward_warp_macs(1, 3, 1, 1, mode="softmax") == 4 * 4 + 3 + 3
