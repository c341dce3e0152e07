"""SAPHNet's efficient attention (Eq. 2-10) and attentive fusion (Eq. 12-13) against literal references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from adeblur.engine.profile import count_macs
from adeblur.ops import (
    AttentiveFusion,
    EfficientAttention,
    attentive_fusion,
    cluster_descriptors,
    distribute_descriptors,
    efficient_attention,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
GATE_INPUTS = ["pooled", "descriptors"]


def _randomise_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Parameters of order 1, so that every gate and softmax is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=g, dtype=parameter.dtype) * 0.7)
    return module


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def reference_attention(module: EfficientAttention, x: torch.Tensor, source: torch.Tensor | None = None):
    """Eq. 2-9 literally, one value at a time (float64 Python lists); the convs by F.conv2d."""
    source = x if source is None else source
    batch, channels, height, width = x.shape
    clusters, hw = module.clusters, height * width
    x64, src = x.double(), source.double()
    m1_logits = F.conv2d(
        x64, module.spatial_gate.weight.double(), module.spatial_gate.bias.double(),
        padding=module.spatial_gate.padding,
    ).tolist()  # fmt: skip
    out = torch.zeros(batch, channels, height, width, dtype=torch.float64)
    for b in range(batch):
        # Eq. 2-3: M1 and x_m1 (x's), the attended features gated by x's M1
        m1 = [[_sigmoid(m1_logits[b][0][i][j]) for j in range(width)] for i in range(height)]
        gated = torch.tensor([[[x64[b, c, i, j].item() * m1[i][j] for j in range(width)] for i in range(height)]
                              for c in range(channels)], dtype=torch.float64)  # fmt: skip
        attended = [[[src[b, c, i, j].item() * m1[i][j] for j in range(width)] for i in range(height)]
                    for c in range(channels)]  # fmt: skip
        q_logits = F.conv2d(gated[None], module.cluster_logits.weight.double(), module.cluster_logits.bias.double(),
                            padding=module.cluster_logits.padding)[0].tolist()  # fmt: skip
        p_logits = F.conv2d(gated[None], module.pixel_logits.weight.double(), module.pixel_logits.bias.double(),
                            padding=module.pixel_logits.padding)[0].tolist()  # fmt: skip
        # Eq. 4: q_k, a softmax over the H*W pixels
        q = []
        for k in range(clusters):
            exps = [[math.exp(q_logits[k][i][j]) for j in range(width)] for i in range(height)]
            total = sum(map(sum, exps))
            q.append([[e / total for e in row] for row in exps])

        def descriptors(features, q=q):  # Eq. 4-5: x^k = q_k * x_m1, then global-sum-pooling over HW
            return [[sum(q[k][i][j] * features[c][i][j] for i in range(height) for j in range(width))
                     for k in range(clusters)] for c in range(channels)]  # fmt: skip

        g = descriptors(attended)
        # Eq. 6-7 / Eq. 10: the channel gate M2 from x's gated features (pooled) or descriptors
        if module.gate_input == "pooled":
            pooled = [sum(gated[c].flatten().tolist()) / hw for c in range(channels)]
            w, bias = module.channel_gate.weight.double()[:, :, 0, 0].tolist(), module.channel_gate.bias.tolist()
            m2 = [_sigmoid(bias[o] + sum(w[o][c] * pooled[c] for c in range(channels))) for o in range(channels)]
        else:
            own = descriptors(gated.tolist())
            w, bias = module.channel_gate.weight.double().tolist(), module.channel_gate.bias.tolist()
            m2 = [_sigmoid(bias[o] + sum(w[o][c][k] * own[c][k] for c in range(channels) for k in range(clusters)))
                  for o in range(channels)]  # fmt: skip
        for i in range(height):
            for j in range(width):
                # Eq. 8: p_j, a softmax over the C2 clusters at pixel j
                exps = [math.exp(p_logits[k][i][j]) for k in range(clusters)]
                p = [e / sum(exps) for e in exps]
                for c in range(channels):
                    # Eq. 8-9 with the plain product of Eq. 10: sum over C2 of p_jk * M2_c * g_ck
                    out[b, c, i, j] = sum(p[k] * m2[c] * g[c][k] for k in range(clusters))
    return out


def _tiny(dtype=torch.float64, seed=0, shape=(2, 3, 3, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gate_input", GATE_INPUTS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_matches_per_pixel_loop(gate_input, cross, dtype, device):
    module = _randomise_(EfficientAttention(3, clusters=2, gate_input=gate_input)).to(device=device, dtype=dtype)
    x = _tiny(dtype).to(device)
    source = _tiny(dtype, seed=1).to(device) if cross else None
    out = module(x, source)
    assert out.dtype == dtype and out.device.type == device and out.shape == x.shape
    expected = reference_attention(module.cpu(), x.cpu(), None if source is None else source.cpu())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out.cpu().double(), expected, rtol=tolerance, atol=tolerance)


def test_reference_is_not_trivially_satisfied():
    module = _randomise_(EfficientAttention(3, clusters=2))
    x = _tiny()
    expected = reference_attention(module, x)
    assert expected.std() > 0.05  # varies over pixels and channels
    module.pixel_logits.bias.data += torch.tensor([1.0, -1.0], dtype=module.pixel_logits.bias.dtype)
    assert not torch.allclose(module(x.float()).double(), expected, atol=1e-3)


@pytest.mark.parametrize("gate_input", GATE_INPUTS)
def test_equals_the_hw_by_hw_quadratic_form(gate_input):
    """y = M2 * x_m1 (Q^T P): the HW x HW matrix the module never forms; its columns sum to 1."""
    module = _randomise_(EfficientAttention(4, clusters=3, gate_input=gate_input)).double()
    x, source = _tiny(shape=(2, 4, 5, 6)), _tiny(shape=(2, 4, 5, 6), seed=3)
    for src in (None, source):
        y, maps = module(x, src, return_maps=True)
        attended = (x if src is None else src) * maps["spatial_gate"]
        quadratic = maps["cluster_maps"].flatten(2).transpose(1, 2) @ maps["pixel_weights"].flatten(2)  # (B, HW, HW)
        torch.testing.assert_close(quadratic.sum(1), torch.ones(2, 30, dtype=torch.float64))
        expected = maps["channel_gate"].flatten(2) * (attended.flatten(2) @ quadratic)
        torch.testing.assert_close(y.flatten(2), expected, rtol=1e-10, atol=1e-12)


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


@pytest.mark.parametrize("gate_input", GATE_INPUTS)
def test_never_forms_an_hw_by_hw_matrix(gate_input):
    module = EfficientAttention(4, clusters=2, gate_input=gate_input)
    x = torch.rand(1, 4, 24, 24)
    with _LargestOutput() as recorder, torch.no_grad():
        module(x, torch.rand(1, 4, 24, 24))
    assert recorder.largest == x.numel()  # C * HW = 2304, while HW * HW = 331776


@pytest.mark.parametrize("gate_input", GATE_INPUTS)
def test_maps_are_normalised(gate_input):
    module = _randomise_(EfficientAttention(4, clusters=5, gate_input=gate_input))
    _, maps = module(torch.rand(2, 4, 6, 7), return_maps=True)
    assert maps["spatial_gate"].shape == (2, 1, 6, 7) and maps["channel_gate"].shape == (2, 4, 1, 1)
    torch.testing.assert_close(maps["cluster_maps"].sum((2, 3)), torch.ones(2, 5))  # each a spatial softmax
    torch.testing.assert_close(maps["pixel_weights"].sum(1), torch.ones(2, 6, 7))  # softmax over C2
    for name in ("spatial_gate", "channel_gate", "cluster_maps", "pixel_weights"):
        assert ((maps[name] > 0) & (maps[name] < 1)).all(), name


@pytest.mark.parametrize("gate_input", GATE_INPUTS)
def test_self_and_cross_attention(gate_input):
    module = _randomise_(EfficientAttention(4, clusters=3, gate_input=gate_input)).double()
    x, source, other = (_tiny(shape=(2, 4, 5, 5), seed=s) for s in (0, 1, 2))
    y_self, maps_self = module(x, return_maps=True)
    y_same, _ = module(x, x.clone(), return_maps=True)
    torch.testing.assert_close(y_same, y_self, rtol=1e-12, atol=1e-12)  # source = x is self-attention
    y_cross, maps_cross = module(x, source, return_maps=True)
    _, maps_other = module(x, other, return_maps=True)
    for name, value in maps_self.items():  # x makes every map: the source changes none of them
        torch.testing.assert_close(maps_cross[name], value, rtol=0, atol=0)
        torch.testing.assert_close(maps_other[name], value, rtol=0, atol=0)
    # only the attended values change: the functional form with x's maps and the source's features
    expected = efficient_attention(
        source, maps_self["cluster_maps"], maps_self["pixel_weights"],
        spatial_gate=maps_self["spatial_gate"], channel_gate=maps_self["channel_gate"],
    )  # fmt: skip
    torch.testing.assert_close(y_cross, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y_cross, y_self)
    # and linearly: the output is linear in the source for fixed maps
    y_sum = module(x, source + 2 * other)
    torch.testing.assert_close(y_sum, y_cross + 2 * module(x, other), rtol=1e-10, atol=1e-12)


def test_functional_pieces():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    cluster_maps = torch.softmax(torch.randn(2, 2, 20, generator=g, dtype=torch.float64), -1).view(2, 2, 4, 5)
    pixel_weights = torch.softmax(torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64), 1)
    descriptors = cluster_descriptors(features, cluster_maps)
    assert descriptors.shape == (2, 3, 2)
    torch.testing.assert_close(descriptors[1, 2, 0], (features[1, 2] * cluster_maps[1, 0]).sum())
    y = distribute_descriptors(descriptors, pixel_weights)
    torch.testing.assert_close(y[0, 1, 3, 2], (pixel_weights[0, :, 3, 2] * descriptors[0, 1]).sum())
    torch.testing.assert_close(efficient_attention(features, cluster_maps, pixel_weights), y)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    cluster_maps = torch.rand(1, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pixel_weights = torch.rand(1, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    spatial_gate = torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    channel_gate = torch.rand(1, 2, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, q, p, m1, m2: efficient_attention(f, q, p, spatial_gate=m1, channel_gate=m2),
        (features, cluster_maps, pixel_weights, spatial_gate, channel_gate),
    )
    for gate_input in GATE_INPUTS:
        module = _randomise_(EfficientAttention(2, clusters=2, gate_input=gate_input)).double()
        x = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
        source = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(module, (x, source))
        assert torch.autograd.gradcheck(module, (x,))


@pytest.mark.parametrize("gate_input", GATE_INPUTS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_count_macs_sees_every_product(gate_input, cross):
    channels, clusters, height, width, batch = 6, 4, 8, 10, 2
    module = EfficientAttention(channels, clusters, gate_input=gate_input)
    x = torch.rand(batch, channels, height, width)
    inputs = (x, torch.rand_like(x)) if cross else (x,)
    hw = height * width
    products = 3 if cross and gate_input == "descriptors" else 2  # + x's own descriptors for its gate
    gate = channels * channels * (1 if gate_input == "pooled" else clusters)
    per_image = hw * (9 * channels + 2 * channels * clusters) + products * hw * channels * clusters + gate
    assert count_macs(module, inputs).total == batch * per_image


def test_gate_input_changes_the_gate():
    x = torch.rand(1, 4, 5, 5)
    pooled = EfficientAttention(4, 3, gate_input="pooled")
    described = EfficientAttention(4, 3, gate_input="descriptors")
    assert isinstance(pooled.channel_gate, torch.nn.Conv2d) and pooled.channel_gate.weight.shape == (4, 4, 1, 1)
    assert isinstance(described.channel_gate, torch.nn.Conv1d) and described.channel_gate.weight.shape == (4, 4, 3)
    assert pooled(x).shape == described(x).shape == x.shape
    assert "gate_input='descriptors'" in repr(described)


@pytest.mark.parametrize("gate_input", GATE_INPUTS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_valid_region_is_the_unpadded_attention(gate_input, cross):
    """valid marks a zero-padded tensor's own pixels: those get the attention of the unpadded tensor
    (f_m1's 3x3 conv sees the same zeros as its own zero padding), whatever else the padding does."""
    module = _randomise_(EfficientAttention(3, clusters=2, gate_input=gate_input).double())
    x = _tiny(shape=(2, 3, 4, 5))
    source = _tiny(seed=1, shape=(2, 3, 4, 5)) if cross else None
    padded_x = F.pad(x, (0, 3, 0, 2))
    padded_source = None if source is None else F.pad(source, (0, 3, 0, 2))
    valid = torch.zeros(2, 1, 6, 8, dtype=torch.bool)
    valid[..., :4, :5] = True
    y, maps = module(padded_x, padded_source, valid=valid, return_maps=True)
    torch.testing.assert_close(y[..., :4, :5], module(x, source), rtol=1e-10, atol=1e-10)
    assert not maps["cluster_maps"].masked_select(~valid).any()  # Q = 0 on the padding
    torch.testing.assert_close(module(padded_x, padded_source, valid=valid.double()), y)  # {0, 1} floats too
    unmasked = module(padded_x, padded_source)[..., :4, :5]
    assert not torch.allclose(unmasked, module(x, source), atol=1e-3)  # without valid, the padding leaks
    nothing_valid = module(padded_x, padded_source, valid=torch.zeros_like(valid))
    assert torch.isfinite(nothing_valid).all()  # an all-padding patch: uniform maps, no NaN


def test_bad_inputs_raise_clear_errors():
    module = EfficientAttention(4, clusters=2)
    with pytest.raises(ValueError, match="valid must be"):
        module(torch.rand(1, 4, 5, 5), valid=torch.ones(1, 4, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="gate_input"):
        EfficientAttention(4, gate_input="mean")
    with pytest.raises(ValueError, match=r"x must be \(B, 4, H, W\)"):
        module(torch.rand(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"x must be"):
        module(torch.rand(4, 5, 5))
    with pytest.raises(ValueError, match="source must have x's shape"):
        module(torch.rand(1, 4, 5, 5), torch.rand(1, 4, 5, 6))
    features = torch.rand(1, 4, 5, 5)
    maps = torch.full((1, 2, 5, 5), 1 / 25)
    with pytest.raises(ValueError, match="pixel_weights"):
        efficient_attention(features, maps, torch.rand(1, 2, 5, 4))
    with pytest.raises(ValueError, match="must match"):
        efficient_attention(features, torch.rand(1, 3, 5, 5), maps)
    with pytest.raises(ValueError, match="spatial_gate"):
        efficient_attention(features, maps, maps, spatial_gate=torch.rand(1, 2, 5, 5))
    with pytest.raises(ValueError, match="channel_gate"):
        efficient_attention(features, maps, maps, channel_gate=torch.rand(1, 3, 1, 1))
    with pytest.raises(ValueError, match="descriptors"):
        distribute_descriptors(torch.rand(1, 4), maps)
    with pytest.raises(ValueError, match="pixel_weights"):
        distribute_descriptors(torch.rand(1, 4, 3), maps)


# ---------------------------------------------------------------------------------------------------
# Attentive fusion (Eq. 12-13)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attentive_fusion_formula(device, dtype):
    g = torch.Generator().manual_seed(0)
    attended, filtered = (torch.randn(2, 3, 4, 5, generator=g, dtype=dtype).to(device) for _ in range(2))
    logits = torch.randn(2, 1, 4, 5, generator=g, dtype=dtype).to(device)
    fused = attentive_fusion(attended, filtered, logits)
    mask = 1 / (1 + torch.exp(-logits))
    torch.testing.assert_close(fused, mask * attended + (1 - mask) * filtered)  # Eq. 13
    assert fused.dtype == dtype and fused.device.type == device
    big = torch.full_like(logits, 50.0)
    torch.testing.assert_close(attentive_fusion(attended, filtered, big), attended)
    torch.testing.assert_close(attentive_fusion(attended, filtered, -big), filtered)


def test_attentive_fusion_module():
    fusion = _randomise_(AttentiveFusion(4, kernel_size=3)).double()
    g = torch.Generator().manual_seed(1)
    module_input, attended, filtered = (torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64) for _ in range(3))
    fused, mask = fusion(module_input, attended, filtered, return_mask=True)
    logits = F.conv2d(module_input, fusion.fusion_logits.weight, fusion.fusion_logits.bias, padding=1)  # Eq. 12
    torch.testing.assert_close(mask, torch.sigmoid(logits))
    assert mask.shape == (2, 1, 5, 6)
    torch.testing.assert_close(fused, mask * attended + (1 - mask) * filtered)
    torch.testing.assert_close(fusion(module_input, attended, filtered), fused)
    inputs = [t[:1, :, :3, :3].clone().requires_grad_() for t in (module_input, attended, filtered)]
    assert torch.autograd.gradcheck(fusion, inputs)


def test_attentive_fusion_bad_shapes():
    with pytest.raises(ValueError, match="same"):
        attentive_fusion(torch.rand(1, 2, 3, 3), torch.rand(1, 3, 3, 3), torch.rand(1, 1, 3, 3))
    with pytest.raises(ValueError, match="fusion_logits"):
        attentive_fusion(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3))
