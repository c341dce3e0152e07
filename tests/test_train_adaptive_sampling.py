"""Training SAPHNet / DMPHN with pixel-adaptive sampling: the two-phase objective, its engine hooks, the CLI.

Tiny models (widths 4-8-16) on 16x16 images or 32x32 patches: the whole file runs in about 15 s on one
CPU thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from adeblur.cli import main
from adeblur.engine.checkpoint import load_checkpoint
from adeblur.engine.config import config_from_dict, load_config
from adeblur.engine.logging import read_csv
from adeblur.engine.train import Objective, train
from adeblur.errors import ConfigError
from adeblur.losses import AdaptiveSamplingLoss, density_ratios, sampling_density_counts
from adeblur.models import DMPHNAS, SAPHNetAS, build_model

ROOT = Path(__file__).resolve().parents[1]
TINY_SAPHNET = {"widths": [4, 8, 16], "blocks": [0, 0, 1], "clusters": 2, "policy_channels": 4}
TINY_DMPHN = {"widths": [4, 8, 16], "blocks": 1, "policy_channels": 4}
LOCAL_BLUR = {"type": "synthetic", "kind": "local", "options": {"local_options": {"max_displacement": 4}}}


def tiny_model(cls=DMPHNAS, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(**(TINY_DMPHN if cls is DMPHNAS else TINY_SAPHNET), **options)


def tiny_batch(batch_size: int = 2, size: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(batch_size, 1, size, size)
    mask[..., : size // 2, : size // 2] = 1  # a blurred quarter
    return {
        "blur": torch.rand(batch_size, 3, size, size, generator=generator),
        "sharp": torch.rand(batch_size, 3, size, size, generator=generator),
        "mask": mask,
    }


def head_parameters(model) -> list[torch.nn.Parameter]:
    return list(model.samplers.parameters())


def restoration_parameters(model) -> list[torch.nn.Parameter]:
    heads = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in heads]


# --- the objective's terms -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [DMPHNAS, SAPHNetAS], ids=["dmphn-as", "saphnet-as"])
def test_terms_match_hand_computed_supervision_reward_and_reinforce(cls):
    model, batch = tiny_model(cls), tiny_batch()
    loss = AdaptiveSamplingLoss(stage_weights=[0.5, 1.0, 2.0])
    terms = loss(model, batch, policy="sample", generator=torch.Generator().manual_seed(5))
    # independent recomputation: the same draw (same seed), a top-K pass, formulas written out
    _, aux = model(batch["blur"], return_aux=True, policy="sample", generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, greedy = model(batch["blur"], return_aux=True, policy="top-k")
    sharp = batch["sharp"]
    per_stage = [((out - sharp) ** 2).mean() for out in aux["stage_outputs"]]
    restoration = 0.5 * per_stage[0] + 1.0 * per_stage[1] + 2.0 * per_stage[2]

    def reward(outputs):  # Eq. 5 as documented: minus the mean absolute error, stages 2 and 3 alike
        return -0.5 * sum((out - sharp).abs().flatten(1).mean(1) for out in outputs[1:])

    sampled_reward, greedy_reward = reward(aux["stage_outputs"]), reward(greedy["stage_outputs"])
    log_prob = aux["log_prob"][0] + aux["log_prob"][1]
    policy_loss = -((sampled_reward - greedy_reward) * log_prob).mean()
    assert torch.allclose(terms["restoration"], restoration, rtol=1e-5)
    for index in range(3):
        assert torch.allclose(terms[f"stage{index + 1}"], per_stage[index], rtol=1e-5)
    assert torch.allclose(terms["reward"], sampled_reward.mean(), rtol=1e-5)
    assert torch.allclose(terms["baseline"], greedy_reward.mean(), rtol=1e-5)
    assert torch.allclose(terms["policy_loss"], policy_loss, rtol=1e-4, atol=1e-7)
    assert torch.allclose(terms["loss"], restoration + policy_loss, rtol=1e-4, atol=1e-7)
    assert terms["loss"].requires_grad and not terms["policy_loss"].requires_grad
    assert sorted(terms) == sorted(
        ["loss", "restoration", "stage1", "stage2", "stage3", "reward", "policy_loss", "baseline",
         "density_ratio", "inside_outside_ratio"]
    )  # fmt: skip


def test_pretraining_terms_have_no_policy_part_and_use_the_uniform_lattice():
    model, batch = tiny_model(), tiny_batch()
    terms = AdaptiveSamplingLoss()(model, batch, policy="uniform")
    _, aux = model(batch["blur"], return_aux=True, policy="uniform")
    assert "policy_loss" not in terms and "baseline" not in terms
    assert torch.equal(terms["loss"], terms["restoration"])
    assert torch.allclose(terms["restoration"], sum(F.mse_loss(o, batch["sharp"]) for o in aux["stage_outputs"]))


def test_leave_one_out_baseline_is_the_mean_of_the_other_rewards():
    model, batch = tiny_model(), tiny_batch(batch_size=3)
    terms = AdaptiveSamplingLoss(baseline="leave-one-out")(
        model, batch, policy="sample", generator=torch.Generator().manual_seed(2)
    )
    _, aux = model(batch["blur"], return_aux=True, policy="sample", generator=torch.Generator().manual_seed(2))
    sampled = aux["stage_outputs"][1:]
    rewards = torch.stack([-0.5 * sum((o[i] - batch["sharp"][i]).abs().mean() for o in sampled) for i in range(3)])
    others = torch.stack([(rewards.sum() - rewards[i]) / 2 for i in range(3)])
    log_prob = aux["log_prob"][0] + aux["log_prob"][1]
    assert torch.allclose(terms["baseline"], others.mean(), rtol=1e-5)
    assert torch.allclose(terms["policy_loss"], -((rewards - others) * log_prob).mean(), rtol=1e-4, atol=1e-7)
    with pytest.raises(ConfigError, match="leave-one-out needs at least 2 images"):
        AdaptiveSamplingLoss(baseline="leave-one-out")(
            model, tiny_batch(batch_size=1), policy="sample", generator=torch.Generator().manual_seed(2)
        )


def test_density_counts_against_a_pixel_loop():
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 1, 10, 14, generator=generator) > 0.6).float()  # padded to 12 x 16 -> 6 x 8 cells
    index = torch.stack([torch.randperm(48, generator=generator)[:9] for _ in range(2)])
    counts = sampling_density_counts(index, mask, selection_size=(6, 8), selection_scale=2, skip=2)
    for b in range(2):
        inside = outside = 0.0
        for k in index[b, 2:].tolist():
            y, x = divmod(k, 8)
            for yy in range(2 * y, 2 * y + 2):
                for xx in range(2 * x, 2 * x + 2):
                    if yy < 10 and xx < 14:  # padding is neither blurred nor sharp
                        inside += float(mask[b, 0, yy, xx]) / 4
                        outside += (1 - float(mask[b, 0, yy, xx])) / 4
        assert counts["points_inside"][b].item() == pytest.approx(inside)
        assert counts["points_outside"][b].item() == pytest.approx(outside)
        assert counts["area_inside"][b].item() == pytest.approx(float(mask[b].sum()) / 4)
        assert counts["area_outside"][b].item() == pytest.approx(float((1 - mask[b]).sum()) / 4)
    # every cell sampled once: the density is the same inside and outside
    everything = sampling_density_counts(torch.arange(48).expand(2, -1), mask, selection_size=(6, 8), selection_scale=2)
    assert all(v.item() == pytest.approx(1.0) for v in density_ratios(everything).values())
    full = sampling_density_counts(index, torch.ones_like(mask), selection_size=(6, 8), selection_scale=2)
    assert density_ratios(full) == {}  # a full mask says nothing


# --- the phases ------------------------------------------------------------------------------------


def test_no_policy_gradient_before_pretrain_steps_and_policy_gradient_after():
    model = tiny_model(policy="sample")
    objective = Objective("adaptive-sampling", model, {"pretrain_steps": 2})
    batch = tiny_batch()
    for step, trains_policy in ((0, False), (1, False), (2, True), (3, True)):
        model.zero_grad(set_to_none=True)
        terms = objective(model, batch, torch.Generator().manual_seed(step), step)
        terms["loss"].backward()
        assert model.policy == ("sample" if trains_policy else "uniform")  # eval: top-K / the lattice
        assert ("policy_loss" in terms) == trains_policy
        heads = [p.grad for p in head_parameters(model)]
        if trains_policy:
            assert any(g is not None and g.abs().sum() > 0 for g in heads)
        else:
            assert all(g is None for g in heads)
        assert all(p.grad is not None for p in restoration_parameters(model))
        assert objective.ready_for_inference(step + 1) == (step + 1 > 2)


def _policy_gradient_step(favour_bright: bool) -> float:
    """One SGD step of the heads alone with a reward that favours the bright (or dark) cells; returns the
    mean logit of bright minus dark cells (not anchors) after it."""
    model = tiny_model(cls=SAPHNetAS, policy="sample")
    cells = (torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    image = (0.2 + 0.6 * F.interpolate(cells, scale_factor=4)).expand(-1, 3, -1, -1)  # 16x16, 4x4 blocks
    bright = F.avg_pool2d(image[:, :1], 2).flatten(1) > 0.5  # on the 8x8 selection grid

    class RegionReward(torch.nn.Module):
        """The real model, with stage outputs whose error falls as more chosen pixels are bright (dark)."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, blur, **kwargs):
            restored, aux = self.inner(blur, **kwargs)
            chosen = torch.cat([index[:, aux["num_anchors"]:] for index in aux["pixel_index"]], 1)
            share = bright.gather(1, chosen).float().mean(1)
            error = 1 - share if favour_bright else share
            aux = {**aux, "stage_outputs": [blur + 0.1 * error.view(-1, 1, 1, 1) for _ in aux["stage_outputs"]]}
            return restored, aux

    loss = AdaptiveSamplingLoss(baseline="leave-one-out")
    optimizer = torch.optim.SGD(head_parameters(model), lr=50.0)
    batch = {"blur": image, "sharp": image}
    loss(RegionReward(), batch, policy="sample", generator=torch.Generator().manual_seed(0))["loss"].backward()
    optimizer.step()
    with torch.no_grad():
        _, aux = model(image, return_aux=True, policy="top-k")
    logits = aux["policy_logits"][0].flatten(1)
    free = logits > torch.finfo(logits.dtype).min  # not an anchor
    return float(logits[bright & free].mean() - logits[~bright & free].mean())


def test_policy_gradient_raises_the_logits_of_the_rewarded_region():
    assert _policy_gradient_step(favour_bright=True) > 0
    assert _policy_gradient_step(favour_bright=False) < 0


# --- the engine ------------------------------------------------------------------------------------


def tiny_run(tmp_path: Path, **changes) -> dict:
    config = {
        "name": "tiny-as",
        "seed": 4,
        "output": str(tmp_path / "run"),
        "model": {"name": "saphnet-as-lite", "options": {**TINY_SAPHNET, "policy": "sample"}},
        "steps": 4,
        "loss": {"name": "adaptive-sampling", "options": {"pretrain_steps": 2}},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "data": {
            "train": [LOCAL_BLUR], "val": LOCAL_BLUR, "val_count": 2, "val_size": 32, "patch_size": 32,
            "batch_size": 2, "pool": {"size": 4, "reuse": 2},
        },  # fmt: skip
        "log_every": 1,
        "val_every": 2,
        "checkpoint_every": 2,
        "keep_last": 3,
        "threads": 1,
    }
    config.update(changes)
    return config


def test_config_errors_and_auto():
    model = tiny_model(policy="sample")
    assert Objective("auto", model, {}).name == "adaptive-sampling"
    with pytest.raises(ConfigError, match="'adaptive-sampling' needs a model with pixel-adaptive sampling"):
        Objective("adaptive-sampling", build_model("nafnet-lite", width=8), {})
    with pytest.raises(ConfigError, match="loss.options.*baseline must be one of"):
        Objective("adaptive-sampling", model, {"baseline": "greedy"})
    with pytest.raises(ConfigError, match="loss.options.*unexpected keyword argument 'pretrain'"):
        Objective("adaptive-sampling", model, {"pretrain": 3})
    with pytest.raises(ConfigError, match="stage_weights': 2 weights for 3 stages"):
        Objective("adaptive-sampling", model, {"stage_weights": [1, 1]})
    with pytest.raises(ConfigError, match="model.options.policy': 'uniform'"):
        Objective("adaptive-sampling", tiny_model(policy="uniform"), {})
    uniform = Objective("adaptive-sampling", tiny_model(sampling="uniform"), {"pretrain_steps": 1})
    terms = uniform(uniform.model, tiny_batch(), torch.Generator().manual_seed(0), 5)  # supervision only
    assert "policy_loss" not in terms and uniform.ready_for_inference(1)


@pytest.mark.parametrize("name", ["saphnet-as", "saphnet-as-lite", "dmphn-as", "dmphn-as-lite"])
def test_shipped_configs_use_the_objective(name):
    config = load_config(ROOT / "configs" / f"{name}.yaml")
    assert config.loss.name == "adaptive-sampling" and config.model.options["policy"] == "sample"
    assert 0 < config.loss.options["pretrain_steps"] < config.steps
    assert "does not exist yet" not in (ROOT / "configs" / f"{name}.yaml").read_text()


def test_resume_across_the_phase_boundary_is_exact(tmp_path):
    straight = train(config_from_dict(tiny_run(tmp_path / "a")))
    seen: list[int] = []
    first = train(
        config_from_dict(tiny_run(tmp_path / "b")),
        callback=lambda e: seen.append(e.step) if e.kind == "step" else None,
        should_stop=lambda: len(seen) >= 1,  # stops after step 1, in pre-training
    )
    assert first.step == 1
    resumed = train(config_from_dict(tiny_run(tmp_path / "b")), resume=tmp_path / "b" / "run")
    assert resumed.step == straight.step == 4
    last = [tmp_path / run / "run" / "checkpoints" / "step_00000004.safetensors" for run in "ab"]
    weights = [load_checkpoint(path).model_state for path in last]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    rows = [read_csv(tmp_path / run / "run" / "train.csv") for run in "ab"]
    for key in ("loss", "policy_loss", "reward", "density_ratio"):
        assert [r[key] for r in rows[0]] == [r[key] for r in rows[1]]
    # the best checkpoint comes from the joint phase (step 4), not from the pre-trained network (step 2)
    assert load_checkpoint(tmp_path / "a" / "run" / "checkpoints" / "best.safetensors").metadata["best"]["step"] == 4


def test_log_rows_average_each_term_over_the_steps_that_have_it(tmp_path):
    loss = {"name": "adaptive-sampling", "options": {"pretrain_steps": 1}}
    straight = tiny_run(tmp_path / "one", log_every=1, steps=3, val_every=10, loss=loss)
    windowed = tiny_run(tmp_path / "three", log_every=3, steps=3, val_every=10, loss=loss)
    train(config_from_dict(straight))
    train(config_from_dict(windowed))
    rows = read_csv(tmp_path / "one" / "run" / "train.csv")
    (row,) = read_csv(tmp_path / "three" / "run" / "train.csv")
    assert row["policy_loss"] == pytest.approx((rows[1]["policy_loss"] + rows[2]["policy_loss"]) / 2)
    assert row["stage1"] == pytest.approx(sum(r["stage1"] for r in rows) / 3)


def test_cli_train_of_the_lite_config_logs_the_sampling_terms(tmp_path, capsys):
    overrides = [
        f"output={tmp_path / 'run'}", "steps=3", "threads=1", "log_every=1", "val_every=3", "checkpoint_every=3",
        "loss.options.pretrain_steps=1", f"model.options.widths={TINY_SAPHNET['widths']}",
        f"model.options.blocks={TINY_SAPHNET['blocks']}", "model.options.clusters=2", "model.options.policy_channels=4",
        "data.patch_size=32", "data.val_size=32", "data.val_count=2", "data.batch_size=2", "data.pool.size=4",
        "data.pool.reuse=2", "data.train.0.kind=local", "data.val.kind=local",
    ]  # fmt: skip
    argv = ["train", str(ROOT / "configs" / "saphnet-as-lite.yaml")]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 0, capsys.readouterr().err
    rows = read_csv(tmp_path / "run" / "train.csv")
    assert [row["step"] for row in rows] == [1, 2, 3]
    logged = {"restoration", "stage1", "stage2", "stage3", "reward", "policy_loss", "baseline", "density_ratio"}
    assert logged <= set(rows[0])
    assert rows[0]["policy_loss"] is None and rows[0]["baseline"] is None  # step 1: pre-training
    assert all(row["policy_loss"] is not None and row["baseline"] is not None for row in rows[1:])
    assert all(row["density_ratio"] > 0 for row in rows)
    # and the density script reads the run
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sampling_density.py"), str(tmp_path / "run" / "config.yaml"),
         "--weights", str(tmp_path / "run" / "checkpoints" / "step_00000003.safetensors"), "--threads", "1",
         "--selections"],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"},
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["count"] == 2 and report["processed"]["all_stages"]["samples"] == 2
    assert report["processed"]["all_stages"]["density_ratio"] > 0
    by_selection = report["psnr_by_selection"]
    assert set(by_selection) == {"policy", "uniform", "random", "oracle", "anti_oracle", "oracle_minus_anti_oracle"}
    assert all(10 < by_selection[name]["psnr"] < 60 for name in ("policy", "uniform", "random", "oracle", "anti_oracle"))
    # opposite choices of pixels give different images (a script that ignored the scores would not)
    assert by_selection["oracle"]["psnr"] != by_selection["anti_oracle"]["psnr"]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["loss"]["options"]["pretrain_steps"] == 1
