"""SAPHNet / DMPHN with pixel-adaptive sampling: selection, set ops against dense oracles, stages, gradients, maps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adeblur.cli import EXIT_OK, main
from adeblur.engine.checkpoint import save_weights
from adeblur.engine.profile import count_macs, randomise_zero_parameters_
from adeblur.errors import ConfigError
from adeblur.io import read_image, write_image
from adeblur.models import build_model, list_models
from adeblur.models.saphnet_as import (
    DMPHNAS,
    PixelSampler,
    SAPHNetAS,
    SetPixelFilter,
    coarse_view,
    sampling_lattice,
)
from adeblur.ops import (
    deform_conv2d,
    pixel_index_to_mask,
    policy_gradient_loss,
    sample_exact_k,
    select_top_k,
)

TINY = {"widths": (4, 8, 16), "blocks": (0, 0, 1), "clusters": 2, "policy_channels": 4}
TINY_DMPHN = {"widths": (4, 8, 16), "blocks": 1, "policy_channels": 4}
BUILDERS = [(SAPHNetAS, TINY), (DMPHNAS, TINY_DMPHN)]


def _seeded(builder, seed=0, **options):
    torch.manual_seed(seed)
    return randomise_zero_parameters_(builder(**options), seed=seed)


class _PreferLeft(nn.Module):
    """A policy head that wants the left quarter of the image."""

    def forward(self, x):
        logits = torch.full_like(x[:, :1], -5.0)
        logits[..., : x.shape[-1] // 4] = 5.0
        return logits


# --- which pixels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0.25, 1.0, 4.0])
def test_k_is_the_uniform_budget_times_the_multiplier(budget):
    image = torch.rand(1, 3, 32, 32)  # deepest grid 8 x 8 (s = 4), selection grid 16 x 16
    for sampling in ("adaptive", "uniform"):
        model = _seeded(SAPHNetAS, budget=budget, sampling=sampling, **TINY).eval()
        _, aux = model(image, return_aux=True)
        assert aux["count"] == budget * 8 * 8
        assert [tuple(index.shape) for index in aux["pixel_index"]] == [(1, budget * 64)] * 2
        assert all(index.unique().numel() == budget * 64 for index in aux["pixel_index"])  # distinct pixels


def test_uniform_switch_is_the_regular_grid():
    model = _seeded(DMPHNAS, sampling="uniform", **TINY_DMPHN)
    _, aux = model(torch.rand(2, 3, 32, 24), return_aux=True)
    expected = torch.zeros(16, 12)
    expected[::2, ::2] = 1  # every second row and column of the selection grid: the stride-2 conv's centres
    for index in aux["pixel_index"]:
        assert torch.equal(pixel_index_to_mask(index, (16, 12)), expected.expand(2, 1, 16, 12))
    assert aux["log_prob"] == [None, None] and aux["policy_logits"] == [None, None]


@pytest.mark.parametrize("builder, options", BUILDERS)
def test_eval_is_deterministic_and_takes_the_top_k(builder, options):
    model = _seeded(builder, **options).eval()
    for sampler in model.samplers:  # a policy with distinct values (the last conv starts at zero)
        nn.init.normal_(sampler.head.layers[-1].weight, std=0.5, generator=torch.Generator().manual_seed(1))
    image = torch.rand(1, 3, 24, 40)
    first, aux = model(image, return_aux=True)
    assert torch.equal(first, model(image))
    anchors = aux["num_anchors"]
    lattice, _ = sampling_lattice(aux["selection_size"], (6, 10))
    for index, logits in zip(aux["pixel_index"], aux["policy_logits"]):
        assert torch.equal(index[:, :anchors], lattice[:anchors].expand(1, -1))
        assert torch.equal(index[:, anchors:], select_top_k(logits, aux["count"] - anchors).sort(1).values)
        assert (logits.flatten(1)[0, lattice[:anchors]] < -1e30).all()  # anchors are never chosen twice


def test_sampled_pixels_concentrate_where_the_policy_wants_them():
    model = _seeded(SAPHNetAS, **TINY).eval()
    for sampler in model.samplers:
        sampler.head = _PreferLeft()
    _, aux = model(torch.rand(1, 3, 32, 64), return_aux=True)
    anchors, width = aux["num_anchors"], aux["selection_size"][1]
    for index in aux["pixel_index"]:
        columns = index[0, anchors:] % width
        assert (columns < width // 4).all()  # every chosen pixel in the left quarter (room for all of them)
        mask = pixel_index_to_mask(index, aux["selection_size"])
        assert mask[..., : width // 4].mean() > 3 * mask[..., width // 4 :].mean()


@pytest.mark.parametrize("builder,options", [(SAPHNetAS, TINY), (DMPHNAS, TINY_DMPHN)])
def test_given_selection_scores_replace_the_policy(builder, options):
    """An oracle study: scores (B, 1, H, W) at the image size choose the pixels instead of the heads."""
    model = _seeded(builder, **options).eval()
    image = torch.rand(2, 3, 30, 62)  # padded to 32 x 64: the padding scores 0
    scores = torch.full((2, 1, 30, 62), 0.5)
    scores[0, ..., :16] = 1.0  # image 0: its left quarter (16 of the 64 padded columns)
    scores[1, ..., 46:] = 1.0  # image 1: the right quarter, whose last 2 columns are padding
    restored, aux = model(image, return_aux=True, selection_scores=scores)
    anchors, width = aux["num_anchors"], aux["selection_size"][1]  # selection grid 16 x 32
    for index in aux["pixel_index"]:
        columns = index[:, anchors:] % width
        assert (columns[0] < 8).all()  # each image its own scores
        # image 1: grid columns 23-31 hold its scores; column 31 (input columns 62-63, padding) scores 0
        # and 23 (input 46-47, all 1) is as good as 24-30, so the choice is within 23-30, never 31
        assert ((columns[1] >= 23) & (columns[1] <= 30)).all()
    assert torch.equal(restored, model(image, selection_scores=scores))  # deterministic top-K
    uniform = model(image, policy="uniform", selection_scores=scores)  # the lattice ignores scores
    assert torch.equal(uniform, model(image, policy="uniform"))
    with pytest.raises(ValueError, match="selection_scores must be"):
        model(image, selection_scores=torch.zeros(2, 1, 32, 64))


@pytest.mark.parametrize("builder,options", BUILDERS)
def test_the_order_of_the_chosen_points_does_not_change_the_output(builder, options, monkeypatch):
    """The sampled stages are set operations: any order of the policy's points gives the same image
    (the sampler hands them over in raster order only because the gathers are faster that way)."""
    model = _seeded(builder, **options).eval()
    image = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    expected, aux = model(image, return_aux=True)
    anchors = aux["num_anchors"]
    for index in aux["pixel_index"]:
        assert (index[:, anchors + 1 :] > index[:, anchors:-1]).all()  # raster order after the anchors
    forward = PixelSampler.forward
    shuffle = torch.Generator().manual_seed(0)

    def shuffled(self, *args, **kwargs):
        selection = forward(self, *args, **kwargs)
        chosen = selection.pixel_index[:, selection.num_anchors :]
        order = torch.stack([torch.randperm(chosen.shape[1], generator=shuffle) for _ in range(chosen.shape[0])])
        index = torch.cat((selection.pixel_index[:, : selection.num_anchors], chosen.gather(1, order)), 1)
        return dataclasses.replace(selection, pixel_index=index)

    monkeypatch.setattr(PixelSampler, "forward", shuffled)
    assert torch.allclose(model(image), expected, atol=1e-5)


def test_sampling_log_probs_match_sample_exact_k():
    model = _seeded(SAPHNetAS, **TINY).train()
    for sampler in model.samplers:
        nn.init.normal_(sampler.head.layers[-1].weight, std=0.5, generator=torch.Generator().manual_seed(2))
    image = torch.rand(2, 3, 16, 24)
    restored, aux = model(image, return_aux=True, policy="sample", generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)  # the stages draw in order, stage 2 first
    chosen = aux["count"] - aux["num_anchors"]
    for index, log_prob, logits in zip(aux["pixel_index"], aux["log_prob"], aux["policy_logits"]):
        expected_index, expected_log_prob = sample_exact_k(logits, chosen, generator=replay)
        assert torch.equal(index[:, aux["num_anchors"] :], expected_index.sort(1).values)  # raster order
        assert torch.allclose(log_prob, expected_log_prob)
    again = model(image, policy="sample", generator=torch.Generator().manual_seed(7))
    assert torch.equal(restored, again)
    with pytest.raises(ValueError, match="generator"):
        model(image, policy="sample")


def test_the_policy_attribute_chooses_in_training_and_uniform_pretraining_stays_uniform_in_eval():
    model = _seeded(SAPHNetAS, policy="uniform", **TINY)
    uniform = _seeded(SAPHNetAS, sampling="uniform", **TINY)
    image = torch.rand(1, 3, 16, 16)
    for mode in (model.train, model.eval):
        mode()
        _, aux = model(image, return_aux=True)
        _, expected = uniform(image, return_aux=True)
        assert all(torch.equal(a, b) for a, b in zip(aux["pixel_index"], expected["pixel_index"]))


# --- the set ops against dense oracles -------------------------------------------------------------


def test_set_pixel_filter_equals_the_dense_deformable_conv_at_the_points():
    generator = torch.Generator().manual_seed(0)
    pdf = SetPixelFilter(6, 4, max_displacement=2.0)
    nn.init.normal_(pdf.meta.weight, std=0.5, generator=generator)
    sampler = PixelSampler(3)
    nn.init.normal_(sampler.head.layers[-1].weight, generator=generator)
    selection = sampler(torch.rand(2, 3, 18, 14, generator=generator), (4, 3), policy="top-k")  # 9 x 7 grid
    fine = torch.rand(2, 4, 9, 7, generator=generator)
    x = torch.rand(2, 6, selection.pixel_index.shape[1], generator=generator)
    out = pdf(x, fine, selection)
    raw = pdf.meta(x)  # the same V and offsets, painted on dense maps at the points, run densely
    dense_raw = torch.zeros(2, raw.shape[1], 9 * 7).scatter(2, selection.pixel_index[:, None].expand_as(raw), raw)
    dense_raw = dense_raw.view(2, -1, 9, 7)
    mask, offset = 2 * torch.sigmoid(dense_raw[:, :25]), 2.0 * torch.tanh(dense_raw[:, 25:])
    dense = deform_conv2d(fine, offset, pdf.weight, pdf.bias, mask=mask, padding=2).flatten(2)
    expected = dense.gather(2, selection.pixel_index[:, None].expand(-1, 6, -1))
    assert torch.allclose(out, expected, atol=1e-4)  # reads within 1e-3 px of a pixel centre snap onto it
    nn.init.zeros_(pdf.meta.weight)  # V = 1, no offsets: a plain 5x5 conv at the points
    plain = F.conv2d(fine, pdf.weight, pdf.bias, padding=2).flatten(2)
    assert torch.allclose(pdf(x, fine, selection), plain.gather(2, selection.pixel_index[:, None].expand(-1, 6, -1)), atol=1e-5)


def test_coarse_view_averages_the_points_of_a_cell_and_falls_back_to_the_nearest_anchor():
    sampler = PixelSampler(3, anchor_stride=2)
    sampler.head = _PreferLeft()
    selection = sampler(torch.rand(1, 3, 16, 16), (4, 4), policy="top-k")  # selection 8 x 8, K = 16, 4 anchors
    values = torch.rand(1, 2, 16)
    view = coarse_view(values, selection)
    cells = selection.coarse_cells()[0]
    anchor_cells = cells[:4]
    for cell in range(16):
        inside = (cells == cell).nonzero().flatten()
        if inside.numel():
            expected = values[0, :, inside].mean(1)
        else:  # nearest anchor of the 2 x 2 anchor layout: anchors sit on cells (0, 0), (0, 2), (2, 0), (2, 2)
            row, column = divmod(cell, 4)
            anchor = (row // 2) * 2 + column // 2
            assert anchor_cells[anchor] == (row // 2 * 2) * 4 + column // 2 * 2
            expected = values[0, :, anchor]
        assert torch.allclose(view[0, :, cell // 4, cell % 4], expected, atol=1e-6)


# --- the models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("builder, options", BUILDERS)
@pytest.mark.parametrize("size", [(17, 23), (5, 3)])
def test_shapes_and_stage_outputs(builder, options, size):
    model = _seeded(builder, **options)
    image = torch.rand(2, 3, *size)
    restored, aux = model(image, return_aux=True)
    assert restored.shape == image.shape
    stages = aux["stage_outputs"]
    assert len(stages) == 3 and all(stage.shape == image.shape for stage in stages)
    assert torch.equal(stages[-1], restored)
    assert not torch.allclose(stages[0], stages[1]) and not torch.allclose(stages[1], stages[2])


@pytest.mark.parametrize("builder, options", BUILDERS)
def test_pretraining_gradients_reach_every_restoration_parameter_and_the_policy_learns_only_by_reinforce(
    builder, options
):
    model = _seeded(builder, **options).train()
    image, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    F.mse_loss(model(image, policy="uniform"), target).backward()
    for name, parameter in model.named_parameters():
        if name.startswith("samplers."):
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)
    restored, aux = model(image, return_aux=True, policy="sample", generator=0)
    F.mse_loss(restored, target).backward(retain_graph=True)
    assert all(p.grad is None for p in model.samplers.parameters())  # no gradient through the discrete choice
    model.zero_grad(set_to_none=True)
    reward = -(restored.detach() - target).abs().flatten(1).mean(1)
    policy_gradient_loss(torch.stack(aux["log_prob"]).sum(0), reward, reward.mean()).backward()
    heads = [p for sampler in model.samplers for p in sampler.head.layers[-1].parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads)
    others = [p for name, p in model.named_parameters() if not name.startswith("samplers.")]
    assert all(p.grad is None for p in others)


@pytest.mark.parametrize("name", ["saphnet-as-lite", "dmphn-as-lite"])
def test_adaptive_and_uniform_sampling_cost_about_the_same(name):
    image = torch.rand(1, 3, 64, 64)
    adaptive = count_macs(build_model(name).eval(), image)
    uniform = count_macs(build_model(name, sampling="uniform").eval(), image)
    assert uniform.total < adaptive.total < 1.08 * uniform.total  # the policy heads' convs
    assert {"PointConv", "PointScatter"} <= set(adaptive.by_module_type)  # the set ops report their work
    more = count_macs(build_model(name, budget=2.0).eval(), image)
    assert more.total > adaptive.total  # Table V: more pixels, more work


def test_deblur_cli_save_maps_draws_the_sampled_pixels(tmp_path):
    model = randomise_zero_parameters_(build_model("saphnet-as-lite"), seed=0)
    weights = save_weights(tmp_path / "w.safetensors", model.state_dict(), metadata={"model": "saphnet-as-lite"})
    image = torch.rand(3, 26, 37, generator=torch.Generator().manual_seed(0))
    source = write_image(tmp_path / "x.png", image)
    argv = ["deblur", source, "--model", "saphnet-as-lite", "--weights", weights, "--save-maps"]
    assert main([str(arg) for arg in argv]) == EXIT_OK
    for name in ("deblurred", "sampled_pixels_stage2", "sampled_pixels_stage3"):
        picture, info = read_image(tmp_path / f"x_{name}.png")
        assert (info.height, info.width) == (26, 37), name
        assert picture.std() > 0.01, name


def test_registry_entries():
    specs = {spec.name: spec for spec in list_models()}
    for name in ("saphnet-as", "saphnet-as-lite", "dmphn-as", "dmphn-as-lite"):
        assert specs[name].trainable
    assert build_model("dmphn-as-lite")(torch.rand(1, 3, 9, 9)).shape == (1, 3, 9, 9)
    with pytest.raises(ConfigError, match="sampling"):
        build_model("saphnet-as", sampling="random")
    with pytest.raises(ConfigError, match="budget"):
        build_model("dmphn-as", budget=0)
    with pytest.raises(ConfigError, match="two scales"):
        build_model("saphnet-as-lite", widths=(8,), blocks=(1,))
