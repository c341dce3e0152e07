"""Tests of adeblur.models: registry, NAFNet, M2AENet (pruned vs dense, ablations, training), overfitting."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from adeblur.errors import ConfigError
from adeblur.losses import M2AENetLoss, reconstruction_loss
from adeblur.models import IdentityModel, M2AENet, ModelSpec, NAFNet, build_model, list_models, register_model
from adeblur.models.blocks import NAFBlock, layer_norm_2d, simple_gate
from adeblur.models.m2aenet import (
    MotionAwareConv,
    downsample_mask,
    find_blurred_pixels,
    gumbel_blur_mask,
    mask_aware_gate,
)
from adeblur.ops import build_sampling_plan, linear_trajectory, motion_aware_offsets, quadratic_trajectory

LITE = {"width": 8, "encoder_blocks": (1, 2), "middle_blocks": 1, "decoder_blocks": (1, 1)}


def randomise_(model: torch.nn.Module, seed: int = 0, motion_scale: float = 4.0) -> torch.nn.Module:
    """Make every part matter: non-zero residual scales (beta/gamma start at 0) and visible motion."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        for analyser in getattr(model, "motion_analysers", {}).values():
            analyser.conv.weight.mul_(motion_scale)
    return model


def centre_predictor_(model: M2AENet) -> None:
    """Hook every mask predictor so that about half of its pixels are predicted blurred (a mixed mask)."""

    def centre(module, args, logits):
        difference = logits[:, :1] - logits[:, 1:]
        return logits - torch.cat((difference.median() + 1e-3 * torch.ones(1), torch.zeros(1))).view(1, 2, 1, 1)

    for predictor in model.mask_predictors.values():
        predictor.register_forward_hook(centre)


def blob_mask(batch: int, height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(batch, 1, height, width)
    mask[0, :, height // 5 : height // 2, width // 4 : 3 * width // 4] = 1
    mask[-1, :, height // 2 :, : width // 3] = 1
    return mask


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_the_models():
    names = [spec.name for spec in list_models()]
    for expected in ("nafnet", "nafnet-lite", "m2aenet", "m2aenet-no-mask", "m2aenet-no-motion", "m2aenet-linear",
                     "m2aenet-lite", "identity"):  # fmt: skip
        assert expected in names
    specs = {spec.name: spec for spec in list_models()}
    assert all(isinstance(spec, ModelSpec) and spec.description for spec in specs.values())
    assert specs["m2aenet"].trainable and not specs["identity"].trainable
    assert isinstance(build_model("identity"), IdentityModel)


def test_unknown_model_lists_known_names():
    with pytest.raises(ConfigError, match="unknown model 'nafnet2'.*known models: nafnet, nafnet-lite"):
        build_model("nafnet2")


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="has no option 'depth'"):
        build_model("m2aenet-lite", depth=3)
    with pytest.raises(ConfigError, match="placement must be one of"):
        build_model("m2aenet-lite", placement="everywhere")
    with pytest.raises(ConfigError, match="trajectory must be one of"):
        build_model("m2aenet-lite", trajectory="cubic")


def test_register_model_checks_names_and_defaults():
    with pytest.raises(ValueError, match="already registered"):
        register_model("nafnet", NAFNet, "again")
    with pytest.raises(ValueError, match="not options of NAFNet"):
        register_model("nafnet-bad", NAFNet, "bad", depth=3)


def test_overrides_merge_into_defaults():
    model = build_model("m2aenet-lite", trajectory="linear", placement="all-stages")
    assert (model.trajectory, model.placement) == ("linear", "all-stages")
    assert len(model.encoders[3]) == 8  # the lite block counts are kept


# --------------------------------------------------------------------------------------------------
# Parameter counts (paper: NAFNet 17.11 M, M2AENet 17.44 M, +0.33 M)


def count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_parameter_counts():
    nafnet = count(build_model("nafnet"))
    assert abs(nafnet - 17.11e6) <= 0.005 * 17.11e6
    assert abs(count(build_model("m2aenet")) - nafnet - 0.33e6) <= 0.1e6
    assert count(build_model("m2aenet-linear")) == count(build_model("m2aenet"))
    lite, m2_lite = count(build_model("nafnet-lite")), count(build_model("m2aenet-lite"))
    assert 1e6 <= lite <= 2.5e6 and 0 < m2_lite - lite < 0.2e6


def test_nafnet_parameter_names_follow_the_official_code():
    keys = set(build_model("nafnet-lite").state_dict())
    for key in ("intro.weight", "ending.bias", "downs.3.weight", "ups.0.0.weight", "middle_blks.0.beta",
                "encoders.3.7.sca.1.weight", "decoders.3.0.norm2.weight", "encoders.0.0.conv5.bias"):  # fmt: skip
        assert key in keys
    assert "ups.0.0.bias" not in keys  # the upsampling 1x1 conv has no bias


# --------------------------------------------------------------------------------------------------
# Blocks and NAFNet against independent references


def test_layer_norm_2d_matches_a_per_pixel_reference():
    x = torch.randn(2, 5, 3, 4)
    weight, bias = torch.randn(5), torch.randn(5)
    mean = x.mean(1, keepdim=True)
    variance = ((x - mean) ** 2).mean(1, keepdim=True)
    expected = (x - mean) / torch.sqrt(variance + 1e-6) * weight.view(1, 5, 1, 1) + bias.view(1, 5, 1, 1)
    torch.testing.assert_close(layer_norm_2d(x, weight, bias), expected, atol=1e-5, rtol=1e-5)


def test_nafblock_matches_the_papers_formula():
    block = randomise_(NAFBlock(4)).eval()
    x = torch.randn(1, 4, 5, 6)

    def ln(t, norm):
        return layer_norm_2d(t, norm.weight, norm.bias)

    with torch.no_grad():
        hidden = block.conv2(block.conv1(ln(x, block.norm1)))
        gated = hidden[:, :4] * hidden[:, 4:]
        attention = block.sca[1](gated.mean(dim=(2, 3), keepdim=True))
        y = x + block.beta * block.conv3(gated * attention)
        ffn = block.conv4(ln(y, block.norm2))
        expected = y + block.gamma * block.conv5(ffn[:, :4] * ffn[:, 4:])
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["nafnet-lite", "m2aenet-lite"])
@pytest.mark.parametrize("size", [(16, 16), (37, 50), (5, 3)])
def test_any_size_gives_the_input_size(name, size):
    model = build_model(name).eval()
    assert model.size_multiple == 16
    image = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(image)
    assert out.shape == image.shape and out.dtype == torch.float32 and out.is_contiguous()


def test_fresh_nafnet_blocks_are_identities():
    # beta = gamma = 0: the output is the input plus ending(intro-path), a pure conv chain
    model = build_model("nafnet-lite").eval()
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        x = model.intro(image)
        for level in range(4):
            x = model.downs[level](x)
        skips = [model.intro(image)]
        for level in range(3):
            skips.append(model.downs[level](skips[-1]))
        for up, skip in zip(model.ups, reversed(skips)):
            x = up(x) + skip
        expected = model.ending(x) + image
        torch.testing.assert_close(model(image), expected, atol=1e-5, rtol=1e-5)


def test_nafnet_weights_initialise_m2aenet():
    nafnet, m2aenet = build_model("nafnet-lite"), build_model("m2aenet-lite")
    missing, unexpected = m2aenet.load_state_dict(nafnet.state_dict(), strict=False)
    assert unexpected == []
    assert {key.split(".")[0] for key in missing} == {"mask_predictors", "motion_analysers", "encoders"}
    assert all(".motion_conv." in key for key in missing if key.startswith("encoders"))


def test_m2aenet_without_mask_and_motion_is_nafnet():
    """Table 3 variant 1): both parts removed gives NAFNet exactly (same parameter names, same output)."""
    nafnet = randomise_(build_model("nafnet-lite")).eval()
    stripped = build_model("m2aenet-lite", use_mask=False, use_motion=False).eval()
    stripped.load_state_dict(nafnet.state_dict())  # strict: the same parameters
    image = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(stripped(image), nafnet(image))


# --------------------------------------------------------------------------------------------------
# M2AENet parts


def test_downsample_mask_is_area_average_then_half():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, :2] = 1  # top-left 2x2 cell: half blurred -> blurred
    mask[0, 0, 0, 2] = 1  # top-right 2x2 cell: a quarter -> sharp
    mask[0, 0, 2:, 2:] = 1  # bottom-right: all
    assert downsample_mask(mask, (2, 2)).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    assert torch.equal(downsample_mask(mask, (4, 4)), mask)


def test_find_blurred_pixels_against_loops():
    mask = (torch.rand(2, 1, 5, 6, generator=torch.Generator().manual_seed(3)) > 0.7).float()
    pixels = find_blurred_pixels(mask)
    flat = mask.flatten()
    assert pixels.index.tolist() == [i for i in range(flat.numel()) if flat[i] > 0.5]
    dilated = []
    for b in range(2):
        for y in range(5):
            for x in range(6):
                window = mask[b, 0, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
                if window.max() > 0.5:
                    dilated.append(b * 30 + y * 6 + x)
    assert pixels.dilated_index.tolist() == dilated
    for q, pixel in enumerate(pixels.index.tolist()):
        b, y, x = pixel // 30, pixel % 30 // 6, pixel % 6
        for k in range(9):
            ty, tx = y + k // 3 - 1, x + k % 3 - 1
            inside = 0 <= ty < 5 and 0 <= tx < 6
            expected = dilated.index(b * 30 + ty * 6 + tx) if inside else len(dilated)
            assert pixels.tap_rows[q, k].item() == expected


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_mask_aware_gate_pruned_equals_dense_equals_formula(fraction):
    pointwise, depthwise = torch.nn.Conv2d(4, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    weights = (pointwise.weight, pointwise.bias, depthwise.weight, depthwise.bias)
    generator = torch.Generator().manual_seed(1)
    f1 = torch.randn(2, 4, 6, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(2, 1, 6, 7, generator=generator) < fraction).float()
    with torch.no_grad():
        convolved = depthwise(pointwise(f1))
        f2 = convolved * mask + torch.cat((f1, f1), 1) * (1 - mask)  # Eq. 5, Rep = tiled channels
        expected = f2[:, :4] * f2[:, 4:]
        torch.testing.assert_close(mask_aware_gate(f1, mask, *weights), expected, atol=1e-5, rtol=1e-5)
        pruned = mask_aware_gate(f1, mask, *weights, find_blurred_pixels(mask))
        torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


def reference_motion_conv(f4: torch.Tensor, weight, bias, displacement: torch.Tensor) -> torch.Tensor:
    """Slow oracle: tap n of the 3x3 depthwise kernel reads f4 bilinearly at z + o(t_n) (zeros outside)."""
    batch, channels, height, width = f4.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=f4.dtype), torch.arange(width, dtype=f4.dtype), indexing="ij")
    out = bias.view(1, -1, 1, 1).expand(batch, -1, height, width).clone()
    for n in range(9):
        x = xs + displacement[:, n, 0]
        y = ys + displacement[:, n, 1]
        grid = torch.stack((2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1), -1)
        sample = F.grid_sample(f4, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out += weight[:, 0, n // 3, n % 3].view(1, -1, 1, 1) * sample
    return out


def test_motion_aware_conv_samples_the_trajectory():
    generator = torch.Generator().manual_seed(2)
    conv = MotionAwareConv(6)
    f4 = torch.randn(2, 6, 7, 9, generator=generator)
    start, end = torch.randn(2, 2, 7, 9, generator=generator) * 2, torch.randn(2, 2, 7, 9, generator=generator) * 2
    trajectory = quadratic_trajectory(start, end, 9)
    mask = (torch.rand(2, 1, 7, 9, generator=generator) > 0.5).float()
    offsets = motion_aware_offsets(trajectory)
    with torch.no_grad():
        convolved = reference_motion_conv(f4, conv.weight, conv.bias, trajectory)
        expected = simple_gate(convolved * mask + f4 * (1 - mask))
        dense = conv(f4, plan=build_sampling_plan(offsets, (7, 9), 3, padding=1), blur_mask=mask)
        pixels = find_blurred_pixels(mask)
        plan = build_sampling_plan(offsets, (7, 9), 3, padding=1, pixel_index=pixels.index)
        pruned = conv(f4.contiguous(memory_format=torch.channels_last), plan=plan, blur_mask=mask)
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pruned, expected, atol=1e-5, rtol=1e-5)


def test_gumbel_mask_is_hard_straight_through_and_seeded():
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    first = gumbel_blur_mask(logits, generator=torch.Generator().manual_seed(5))
    again = gumbel_blur_mask(logits, generator=torch.Generator().manual_seed(5))
    other = gumbel_blur_mask(logits, generator=torch.Generator().manual_seed(6))
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(first, again) and not torch.equal(first, other)
    first.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the sample follows the probabilities: strongly blurred logits give 1 almost surely
    certain = torch.tensor([8.0, -8.0]).view(1, 2, 1, 1).expand(1, 2, 16, 16)
    assert gumbel_blur_mask(certain, generator=torch.Generator().manual_seed(0)).mean() > 0.99


# --------------------------------------------------------------------------------------------------
# M2AENet as a whole


def test_eval_mask_is_probability_above_threshold():
    model = build_model("m2aenet", **LITE).eval()
    image = torch.rand(2, 3, 32, 32)
    centre_predictor_(model)
    logits = []
    model.mask_predictors["encoder2"].register_forward_hook(lambda module, args, out: logits.append(out))
    with torch.no_grad():
        _, aux = model(image, return_aux=True)
    stage = aux["encoder2"]
    assert stage["scale"] == 2 and stage["trajectory"] == "quadratic"
    torch.testing.assert_close(stage["blur_probability"], torch.softmax(logits[0], 1)[:, :1])  # Eq. 1
    assert torch.equal(stage["blur_mask"], (stage["blur_probability"] > 0.5).float())  # Eq. 3
    assert 0.2 < stage["blur_mask"].mean() < 0.8 and stage["blur_mask"].shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    "options", [{}, {"placement": "all-stages"}, {"use_motion": False}, {"trajectory": "linear"}], ids=str
)
def test_pruned_inference_equals_dense_masked(options):
    model = randomise_(build_model("m2aenet", **{**LITE, **options})).eval()
    image = torch.rand(2, 3, 30, 36, generator=torch.Generator().manual_seed(0))
    centre_predictor_(model)
    with torch.no_grad():
        model.pruned_inference = True
        pruned, aux = model(image, return_aux=True)
        model.pruned_inference = False
        dense = model(image)
    for stage in aux.values():
        assert 0.05 < stage["blur_mask"].mean() < 0.95  # neither empty nor full
    assert (pruned - dense).abs().max() <= 1e-4
    # the M2AS blocks matter: with everything sharp the output changes
    model.forced_blur_mask = torch.zeros(1, 1, 30, 36)
    with torch.no_grad():
        assert (model(image) - dense).abs().max() > 1e-2


def test_pruned_inference_equals_dense_masked_for_the_registered_lite_model():
    model = randomise_(build_model("m2aenet-lite")).eval()
    centre_predictor_(model)
    image = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pruned, aux = model(image, return_aux=True)
        model.pruned_inference = False
        dense = model(image)
    assert 0.05 < aux["encoder4"]["blur_mask"].mean() < 0.95
    assert (pruned - dense).abs().max() <= 1e-4


def test_pruned_path_is_differentiable_too():
    """Eval mode without no_grad (e.g. gradients w.r.t. the input) works on the pruned path."""
    model = randomise_(build_model("m2aenet", **LITE)).eval()
    model.forced_blur_mask = blob_mask(2, 32, 32)
    image = torch.rand(2, 3, 32, 32, requires_grad=True)
    model(image).sum().backward()
    assert image.grad.abs().sum() > 0
    assert model.encoders[1][0].conv1.weight.grad.abs().sum() > 0
    assert model.encoders[1][0].motion_conv.weight.grad.abs().sum() > 0


def test_pruned_path_runs_on_the_blurred_pixels_only(monkeypatch):
    model = randomise_(build_model("m2aenet", **LITE)).eval()
    model.forced_blur_mask = blob_mask(2, 32, 32)
    seen = []
    original = MotionAwareConv.forward

    def spy(self, f4, *, plan, blur_mask):
        seen.append(plan.num_pixels)
        return original(self, f4, plan=plan, blur_mask=blur_mask)

    monkeypatch.setattr(MotionAwareConv, "forward", spy)
    with torch.no_grad():
        _, aux = model(torch.rand(2, 3, 32, 32), return_aux=True)
    blurred = int(aux["encoder2"]["blur_mask"].sum())
    assert seen == [blurred, blurred] and 0 < blurred < 2 * 16 * 16


def test_forced_mask_is_resized_and_padded():
    model = build_model("m2aenet", **LITE).eval()
    mask = torch.zeros(1, 1, 30, 30)
    mask[..., :15, :] = 1
    model.forced_blur_mask = mask
    with torch.no_grad():
        _, aux = model(torch.rand(2, 3, 30, 30), return_aux=True)
    expected = downsample_mask(F.pad(mask, (0, 2, 0, 2)), (16, 16)).expand(2, -1, -1, -1)
    assert torch.equal(aux["encoder2"]["blur_mask"], expected)
    model.forced_blur_mask = torch.zeros(1, 1, 40, 40)
    with pytest.raises(ValueError, match="larger than the"):
        model(torch.rand(1, 3, 30, 30))


def test_ablation_variants_have_the_right_parts():
    full = build_model("m2aenet-lite")
    no_mask, no_motion = build_model("m2aenet-no-mask", **LITE), build_model("m2aenet-no-motion", **LITE)
    assert set(full.mask_predictors) == set(full.motion_analysers) == {"encoder4"}
    assert len(no_mask.mask_predictors) == 0 and set(no_mask.motion_analysers) == {"encoder2"}
    assert set(no_motion.mask_predictors) == {"encoder2"} and len(no_motion.motion_analysers) == 0
    block = no_mask.encoders[1][0]
    assert not block.use_mask and block.motion_conv is not None
    block = no_motion.encoders[1][0]
    assert block.use_mask and block.motion_conv is None
    assert all(isinstance(b, NAFBlock) for b in full.encoders[2])  # other stages keep NAFBlocks
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        _, aux_no_mask = no_mask.eval()(image, return_aux=True)
        _, aux_no_motion = no_motion.eval()(image, return_aux=True)
    assert sorted(aux_no_mask["encoder2"]) == ["displacement_end", "displacement_start", "scale", "trajectory"]
    assert sorted(aux_no_motion["encoder2"]) == ["blur_logit", "blur_mask", "blur_probability", "scale"]


def test_linear_variant_uses_eq_12(monkeypatch):
    quadratic = randomise_(build_model("m2aenet", **LITE, use_mask=False)).eval()
    linear = build_model("m2aenet", **LITE, use_mask=False, trajectory="linear").eval()
    linear.load_state_dict(quadratic.state_dict())
    image = torch.rand(1, 3, 16, 16)
    offsets = []
    original = build_sampling_plan

    def spy(offset, *args, **kwargs):
        offsets.append(offset)
        return original(offset, *args, **kwargs)

    monkeypatch.setattr("adeblur.models.m2aenet.build_sampling_plan", spy)
    with torch.no_grad():
        _, aux = linear(image, return_aux=True)
        assert (linear(image) - quadratic(image)).abs().max() > 1e-4
    stage = aux["encoder2"]
    expected = motion_aware_offsets(linear_trajectory(stage["displacement_start"], stage["displacement_end"], 9))
    torch.testing.assert_close(offsets[0], expected)


def test_training_mode_is_differentiable_everywhere():
    model = randomise_(build_model("m2aenet", **LITE)).train()
    batch = {"blur": torch.rand(2, 3, 32, 32), "sharp": torch.rand(2, 3, 32, 32), "mask": blob_mask(2, 32, 32)}
    restored, aux = model(batch["blur"], return_aux=True, generator=torch.Generator().manual_seed(0))
    assert set(aux["encoder2"]["blur_mask"].unique().tolist()) <= {0.0, 1.0}
    assert aux["encoder2"]["blur_mask"].requires_grad  # straight-through
    M2AENetLoss()(restored, aux, batch)["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_training_noise_comes_from_the_seed():
    model = randomise_(build_model("m2aenet", **LITE)).train()
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        a = model(image, generator=torch.Generator().manual_seed(1))
        b = model(image, generator=torch.Generator().manual_seed(1))
        c = build_model("m2aenet", **LITE, seed=0)
        c.load_state_dict(model.state_dict())
        d = build_model("m2aenet", **LITE, seed=0)
        d.load_state_dict(model.state_dict())
        own_c, own_d = c.train()(image), d.train()(image)
    assert torch.equal(a, b) and torch.equal(own_c, own_d)


# --------------------------------------------------------------------------------------------------
# Overfitting a tiny batch


@pytest.mark.slow
def test_m2aenet_lite_overfits_a_tiny_batch():
    """Within 200 steps the restored images get 4x closer to the sharp ones (Eq. 8) than the blurred input.

    About 55 steps (5 s) on an idle 2-core CPU; the step budget leaves room for slower machines.
    """
    from adeblur.data.synth import dead_leaves, synthesize_local_blur

    torch.manual_seed(0)  # default initialisation of the layers
    batch = synthesize_local_blur(dead_leaves(2, 64, 64, generator=0), generator=1, max_displacement=8.0)
    assert batch["mask"].mean() > 0.02
    baseline = reconstruction_loss(batch["blur"], batch["sharp"]).item()
    model = build_model("m2aenet-lite").train()
    loss_fn = M2AENetLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.9), weight_decay=1e-3)
    generator = torch.Generator().manual_seed(0)
    history = []
    for _ in range(200):
        restored, aux = model(batch["blur"], return_aux=True, generator=generator)
        terms = loss_fn(restored, aux, batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        history.append({key: value.item() for key, value in terms.items()})
        if history[-1]["reconstruction"] < baseline / 4:
            break
    assert history[-1]["reconstruction"] < baseline / 4, (baseline, history[-1], len(history))
    assert history[-1]["loss"] < history[0]["loss"] / 2
    assert history[-1]["mask"] < history[0]["mask"]
