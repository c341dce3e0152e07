"""The training engine: configs, the data pipeline, resume, distributed training, the CLI.

Everything runs on CPU with tiny models (width 8, two levels) on 32x32 patches, so a whole training
run takes a second or two.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from adeblur.cli import main
from adeblur.data.synthetic import synthesize_batch
from adeblur.engine.checkpoint import load_checkpoint, load_weights
from adeblur.engine.config import (
    SourceConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from adeblur.engine.data import (
    PairPool,
    SampleStream,
    build_source,
    chunk_sample_numbers,
    collate_samples,
    finish_batch,
    pool_first_chunk,
)
from adeblur.engine.logging import read_csv
from adeblur.engine.train import TrainEvent, train
from adeblur.errors import AdeblurError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"width": 8, "encoder_blocks": [1, 1], "middle_blocks": 1, "decoder_blocks": [1, 1]}


def tiny_config(tmp_path: Path, **changes) -> dict:
    """A complete config dict for a 2-level m2aenet-lite on 32x32 dead-leaves patches."""
    config = {
        "name": "tiny",
        "seed": 3,
        "output": str(tmp_path / "run"),
        "model": {"name": "m2aenet-lite", "options": dict(TINY)},
        "steps": 6,
        "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.9], "weight_decay": 1e-3},
        "schedule": {"name": "cosine", "min_lr": 1e-6},
        "data": {
            "train": [{"type": "synthetic", "kind": "local", "options": {"local_options": {"max_displacement": 4}}}],
            "val": {"type": "synthetic", "kind": "local", "options": {"local_options": {"max_displacement": 4}}},
            "val_count": 2,
            "val_size": 32,
            "patch_size": 32,
            "batch_size": 2,
            "pool": {"size": 4, "reuse": 2},
        },
        "log_every": 1,
        "val_every": 3,
        "checkpoint_every": 2,
        "keep_last": 2,
        "threads": 1,
    }
    for key, value in changes.items():
        config = apply_overrides(config, [f"{key}={value}"]) if isinstance(value, str) else _set(config, key, value)
    return config


def _set(config: dict, key: str, value) -> dict:
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return config


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = sorted((run_dir / "checkpoints").glob("step_*.safetensors"))[-1]
    return load_checkpoint(latest).model_state


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


# --- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    config = load_config(path)
    assert config.name == path.stem
    assert config.model.name == path.stem  # one config per registered trainable model


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "quick").glob("*.yaml")), ids=lambda p: p.name)
def test_quick_demo_configs_validate_and_need_no_files(path):
    from adeblur.models import list_models

    config = load_config(path)
    assert config.name == path.stem
    assert config.model.name in {spec.name for spec in list_models() if spec.trainable}
    assert all(source.type == "synthetic" and not source.images for source in [*config.data.train, config.data.val])


def test_lite_recipes_share_one_budget():
    recipes = [config_to_dict(load_config(ROOT / "configs" / f"{name}.yaml")) for name in ("m2aenet-lite", "nafnet-lite")]
    for recipe in recipes:  # only the model, its loss and the run name may differ
        del recipe["name"], recipe["model"], recipe["loss"]
    assert recipes[0] == recipes[1]


COMPARISON = ("dmphn", "saphnet", "dmphn-as", "saphnet-as")


@pytest.mark.parametrize("name", COMPARISON)
def test_comparison_configs_validate(name):
    config = load_config(ROOT / "configs" / "compare" / f"{name}-local.yaml")
    assert (config.name, config.model.name) == (f"{name}-local", f"{name}-lite")
    assert all(source.kind == "local" for source in [*config.data.train, config.data.val])  # issue 8: local blur


def test_comparison_configs_share_one_budget():
    """Equal budgets (issues 7-8): only the model, its options, its loss and the run name differ."""
    recipes = [config_to_dict(load_config(ROOT / "configs" / "compare" / f"{name}-local.yaml")) for name in COMPARISON]
    for recipe in recipes:
        del recipe["name"], recipe["model"], recipe["loss"]
    assert all(recipe == recipes[0] for recipe in recipes)
    sampled = [load_config(ROOT / "configs" / "compare" / f"{name}-local.yaml") for name in COMPARISON[2:]]
    assert all(c.loss.name == "adaptive-sampling" and c.model.options == {"policy": "sample"} for c in sampled)
    assert len({c.loss.options["pretrain_steps"] for c in sampled}) == 1  # pre-training inside the same steps


def test_every_trainable_model_has_a_config():
    from adeblur.models import list_models

    names = {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    missing = [spec.name for spec in list_models() if spec.trainable and spec.name not in names]
    assert not missing


def test_paper_settings_of_m2aenet():
    config = load_config(ROOT / "configs" / "m2aenet.yaml")
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.betas) == ("adamw", 1e-3, (0.9, 0.9))
    assert (config.optimizer.weight_decay, config.schedule.name, config.schedule.min_lr) == (1e-3, "cosine", 1e-6)
    assert (config.data.batch_size, config.data.patch_size, config.data.crop) == (8, 256, "blur-aware")
    assert [(s.type, s.weight) for s in config.data.train] == [("gopro", 1.0), ("reloblur", 1.0)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stpes": 3}, "unknown key 'stpes' (did you mean 'steps'?)"),
        ({"optimizer": {"lr": "fast"}}, "'optimizer.lr': expected a number, got 'fast'"),
        ({"steps": 2.5}, "'steps': expected an integer"),
        ({"steps": True}, "'steps': expected an integer"),
        ({"data": {"batch_size": 0}}, "'data.batch_size': must be > 0"),
        ({"optimizer": {"betas": [0.9]}}, "'optimizer.betas': expected a list of 2 values"),
        ({"schedule": {"name": "linear"}}, "'schedule.name': expected one of constant, cosine, step"),
        ({"schedule": {"name": "step"}}, "'schedule.step_size': required"),
        ({"model": {"name": "nafnet-huge"}}, "unknown model 'nafnet-huge'"),
        ({"model": {"name": "identity"}}, "nothing to train"),
        ({"model": {"options": {"depth": 3}}}, "has no option 'depth'"),
        ({"data": {"train": [{"type": "gopro"}]}}, "'data.train.0.root': a gopro source needs the dataset folder"),
        ({"data": {"train": [{"type": "synthetic", "wieght": 2}]}}, "unknown key 'data.train.0.wieght'"),
        ({"data": {"pool": {"size": 1}}}, "'data.pool.size': must be 0 or at least data.batch_size"),
        ({"ema_decay": 1.5}, "'ema_decay': must be in (0, 1)"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, change, message):
    config = tiny_config(tmp_path)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value
    with pytest.raises(ConfigError) as caught:
        config_from_dict(config)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def _merge(target: dict, change: dict) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def test_yaml_reads_exponents_as_floats_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    config = tiny_config(tmp_path)
    path.write_text(yaml.safe_dump(config).replace("0.001", "1e-3"))
    assert "1e-3" in path.read_text()
    loaded = load_config(path, ["optimizer.lr=2e-4", "data.train.0.weight=3", "ema_decay=0.99"])
    assert loaded.optimizer.lr == 2e-4 and isinstance(loaded.optimizer.lr, float)
    assert loaded.data.train[0].weight == 3.0 and loaded.ema_decay == 0.99
    assert config_from_dict(config_to_dict(loaded)) == loaded
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(path, ["steps"])
    with pytest.raises(ConfigError, match="not an item of a list"):
        load_config(path, ["data.train.5.weight=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")


# --- data pipeline -------------------------------------------------------------------------------


def test_distributed_chunks_cover_what_one_process_reads():
    for chunk in range(3):
        together = sorted(chunk_sample_numbers(chunk, 3, rank, 2) for rank in range(2))
        assert sorted(sum(together, [])) == chunk_sample_numbers(chunk, 6)


def test_stream_is_a_pure_function_of_the_sample_number():
    source = SourceConfig("synthetic", kind="mixed", options={"local_options": {"max_displacement": 3}})
    a = SampleStream([build_source(source, patch_size=16, seed=1)], [1.0], seed=1)
    b = SampleStream([build_source(source, patch_size=16, seed=1)], [1.0], seed=1)
    for number in (5, 0, 5, 11):
        assert torch.equal(a[number]["blur"], b[number]["blur"])
    assert not torch.equal(a[0]["sharp"], a[1]["sharp"])


def test_stream_mixes_sources_by_weight(tmp_path):
    sources = [
        build_source(SourceConfig("synthetic", kind="global"), patch_size=8, blur_on_device=True, length=3),
        build_source(SourceConfig("synthetic", kind="local"), patch_size=8, blur_on_device=True, length=3),
    ]
    stream = SampleStream(sources, [3.0, 1.0], seed=0)
    kinds = [stream[n]["kind"] for n in range(400)]
    assert 0.68 < kinds.count("global") / 400 < 0.82


def test_collate_gives_each_sample_its_own_mask():
    gopro_like = {"blur": torch.rand(3, 4, 4), "sharp": torch.rand(3, 4, 4), "name": "a"}
    mask = torch.zeros(1, 4, 4)
    mask[0, 1, 1] = 1
    reloblur_like = {"blur": torch.rand(3, 4, 4), "sharp": torch.rand(3, 4, 4), "mask": mask, "kernel": torch.ones(1, 3, 3)}
    batch = collate_samples([gopro_like, reloblur_like])
    assert torch.equal(batch["mask"][0], torch.ones(1, 4, 4)) and torch.equal(batch["mask"][1], mask)
    assert "kernel" not in batch and batch["pending"] == [None, None]


def test_device_blur_fills_only_pending_rows():
    ready = {"blur": torch.zeros(3, 16, 16), "sharp": torch.ones(3, 16, 16)}
    pending = {"sharp": torch.rand(3, 16, 16), "kind": "global"}
    options = {"global_options": {"kernel_size": 9, "length_range": (3, 5)}}
    out = finish_batch(collate_samples([ready, pending]), "cpu", torch.Generator().manual_seed(0), **options)
    assert torch.equal(out["blur"][0], torch.zeros(3, 16, 16))
    assert not torch.equal(out["blur"][1], out["sharp"][1])
    assert torch.equal(out["mask"][1], torch.ones(1, 16, 16))  # camera shake blurs everything


def test_device_local_blur_keeps_its_objects_in_the_sharp_target():
    # Local blur composites moving objects into the scene: the target must be that scene at mid-exposure,
    # the very pair synthesize_batch makes, not the background the objects were pasted on.
    backgrounds = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pending = [{"sharp": image, "kind": "local"} for image in backgrounds]
    out = finish_batch(collate_samples(pending), "cpu", torch.Generator().manual_seed(0))
    made = synthesize_batch(backgrounds, "local", torch.Generator().manual_seed(0))
    for key in ("blur", "sharp", "mask"):
        assert torch.equal(out[key], made[key]), key
    assert not torch.equal(out["sharp"], backgrounds)


def test_pool_ring_and_draws():
    pool = PairPool(capacity=6, batch_size=2, device="cpu")
    for value in range(4):  # 3 slots: the 4th batch replaces the 1st
        full = torch.full((2, 3, 4, 4), value / 4)
        pool.put({"blur": full, "sharp": full, "mask": torch.ones(2, 1, 4, 4)})
    stored = sorted({round(float(v), 3) for v in pool.store["blur"][:, 0, 0, 0]})
    assert stored == [0.25, 0.5, 0.75]
    draw = pool.draw(torch.Generator().manual_seed(0))
    assert draw["blur"].dtype == torch.float32 and draw["mask"].dtype == torch.float32
    again = pool.draw(torch.Generator().manual_seed(0))
    assert all(torch.equal(draw[k], again[k]) for k in draw)


def test_pool_augmentation_keeps_pairs_aligned():
    pool = PairPool(capacity=8, batch_size=8, device="cpu")
    image = torch.rand(8, 3, 6, 6)
    pool.put({"blur": image, "sharp": image, "mask": (image[:, :1] > 0.5).float()})
    draw = pool.draw(torch.Generator().manual_seed(1))
    assert torch.equal(draw["blur"], draw["sharp"])
    assert torch.equal(draw["mask"], (draw["sharp"][:, :1] > 0.5).float())


def test_pool_first_chunk_matches_a_straight_run():
    slots, reuse = 3, 2
    held = list(range(slots))
    for step in range(12):  # what the pool holds before each step's refresh, simulated
        assert held == list(range(pool_first_chunk(step, reuse), pool_first_chunk(step, reuse) + slots))
        if step > 0 and step % reuse == 0:
            held = held[1:] + [held[-1] + 1]


# --- training runs -------------------------------------------------------------------------------


def test_training_run_writes_logs_checkpoints_and_improves(tmp_path):
    events: list[TrainEvent] = []
    result = train(config_from_dict(tiny_config(tmp_path, steps=8, **{"optimizer.lr": 3e-3})), callback=events.append)
    run = tmp_path / "run"
    assert result.stopped == "done" and result.step == 8
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.safetensors", "step_00000006.safetensors", "step_00000008.safetensors"
    ]  # fmt: skip
    rows = read_csv(run / "train.csv")
    assert [row["step"] for row in rows] == list(range(1, 9))
    assert {"loss", "reconstruction", "mask", "reblur", "lr", "patches_per_second", "data_fraction"} <= set(rows[0])
    val = read_csv(run / "val.csv")
    assert [row["step"] for row in val] == [0, 3, 6, 8]
    assert val[0]["input_psnr_w"] is not None and val[1].get("input_psnr_w") is None
    assert val[-1]["psnr"] > val[0]["psnr"]  # learns something in 8 steps
    assert list((run / "events").glob("events.out.tfevents.*"))
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 8
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "checkpoint" in kinds
    best = load_checkpoint(run / "checkpoints" / "best.safetensors")
    assert best.metadata["best"]["metric"] == "psnr_w"
    weights, _ = load_weights(run / "checkpoints" / "step_00000008.safetensors")
    assert weights.keys() == final_weights(run).keys()


@pytest.mark.parametrize(
    "changes",
    [
        {},  # pool, device-side blur, M2AENet (Gumbel noise)
        {"data.pool.size": 0, "data.synthesize_on": "loader", "ema_decay": 0.9, "grad_clip": 0.5},
    ],
    ids=["pool-device", "stream-loader-ema"],
)
def test_resume_continues_exactly(tmp_path, changes):
    straight = train(config_from_dict(tiny_config(tmp_path / "a", **changes)))
    steps_seen = []

    def stop_half_way() -> bool:
        return len(steps_seen) >= 3

    first = train(
        config_from_dict(tiny_config(tmp_path / "b", **changes)),
        callback=lambda e: steps_seen.append(e.step) if e.kind == "step" else None,
        should_stop=stop_half_way,
    )
    assert first.stopped == "interrupted" and first.step == 3
    resumed = train(config_from_dict(tiny_config(tmp_path / "b", **changes)), resume=tmp_path / "b" / "run")
    assert resumed.step == straight.step == 6
    assert max_difference(final_weights(tmp_path / "a" / "run"), final_weights(tmp_path / "b" / "run")) == 0.0
    a = read_csv(tmp_path / "a" / "run" / "train.csv")
    b = read_csv(tmp_path / "b" / "run" / "train.csv")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    if "ema_decay" in changes:
        ema_a = load_checkpoint(sorted((tmp_path / "a" / "run" / "checkpoints").glob("step_*"))[-1]).ema_state
        ema_b = load_checkpoint(sorted((tmp_path / "b" / "run" / "checkpoints").glob("step_*"))[-1]).ema_state
        assert max_difference(ema_a, ema_b) == 0.0


def test_refuses_to_overwrite_a_run_and_checks_the_resumed_model(tmp_path):
    train(config_from_dict(tiny_config(tmp_path, steps=2)))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config_from_dict(tiny_config(tmp_path, steps=2)))
    other = tiny_config(tmp_path, steps=4)
    other["model"]["name"] = "nafnet-lite"
    with pytest.raises(ConfigError, match="the checkpoint is of model 'm2aenet-lite'"):
        train(config_from_dict(other), resume=tmp_path / "run")
    extended = train(config_from_dict(tiny_config(tmp_path, steps=4)), resume=tmp_path / "run")
    assert extended.step == 4
    with pytest.raises(ConfigError, match="no such file"):
        train(config_from_dict(tiny_config(tmp_path, steps=4)), resume=tmp_path / "nothing")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    train(config_from_dict(tiny_config(tmp_path, steps=2)))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AdeblurError) as caught:
        train(config_from_dict(tiny_config(tmp_path, steps=4)), resume=bad)
    assert "bad.safetensors" in str(caught.value)


def test_file_datasets_mix_with_masks_per_sample(tmp_path):
    from adeblur.data.generate import write_synthetic_dataset

    for kind in ("local", "global"):
        for _ in write_synthetic_dataset(tmp_path / kind, kind=kind, count=3, seed=1, size=(40, 40)):
            pass
    config = tiny_config(tmp_path, steps=2)
    config["data"]["train"] = [
        {"type": "paired", "root": str(tmp_path / "local"), "weight": 1.0},
        {"type": "paired", "root": str(tmp_path / "global"), "weight": 1.0},
    ]
    config["data"]["val"] = {"type": "paired", "root": str(tmp_path / "local")}
    config["data"]["crop"] = "blur-aware"
    result = train(config_from_dict(config))
    assert result.step == 2 and result.validation["psnr_w"] is not None


def test_max_minutes_stops_with_a_checkpoint(tmp_path):
    result = train(config_from_dict(tiny_config(tmp_path, steps=50)), max_minutes=0.0)
    assert result.stopped == "time" and result.step == 0
    assert result.last_checkpoint is not None and load_checkpoint(result.last_checkpoint).metadata["step"] == 0


# --- distributed ---------------------------------------------------------------------------------


def _run_in_own_group(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command``; on timeout kill its whole process group (torchrun's workers too), then fail."""
    process = subprocess.Popen(
        command, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{' '.join(command[:6])} ... did not finish in {timeout} s")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_whole_batch(tmp_path):
    """DDP over gloo on CPU: 2 processes x batch 2 end where 1 process x batch 4 ends (same samples)."""
    changes = {"data.pool.size": 0, "data.synthesize_on": "loader", "steps": 4, "val_every": 2}
    single = tiny_config(tmp_path / "one", **changes)
    single["model"]["name"] = "nafnet-lite"  # no random draws in its forward pass
    _set(single, "data.batch_size", 4)
    train(config_from_dict(single))
    config = tiny_config(tmp_path / "two", **changes)
    config["model"]["name"] = "nafnet-lite"
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "adeblur", "train", str(path),
    ]  # fmt: skip
    done = _run_in_own_group(command, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = final_weights(tmp_path / "two" / "run")
    one = final_weights(tmp_path / "one" / "run")
    # The same samples and the same averaged gradients, up to the order of floating-point sums.
    print("DDP vs single-process max weight difference:", max_difference(one, two))
    assert max_difference(one, two) < 1e-5
    rows = read_csv(tmp_path / "two" / "run" / "val.csv")
    assert rows[0]["count"] == 2


# --- command line --------------------------------------------------------------------------------


def test_cli_train_and_bad_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, steps=2)))
    assert main(["train", str(path), "--set", "val_every=1"]) == 0
    assert "finished at step 2" in capsys.readouterr().err
    assert main(["train", str(path)]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", str(path), "--set", "stpes=3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'steps'" in err


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    config = tiny_config(tmp_path, steps=400, checkpoint_every=1, val_every=1000)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "adeblur", "train", str(path)]
    process = subprocess.Popen(command, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 120
    while len(list(checkpoints.glob("step_*.safetensors"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # kill it somewhere in the middle of a step or a checkpoint write
    process.send_signal(signal.SIGKILL)
    process.communicate()
    steps = [int(p.stem.split("_")[1]) for p in checkpoints.glob("step_*.safetensors")]
    assert steps and max(steps) < 400
    resumed = _run_in_own_group(command + ["--resume", str(tmp_path / "run"), "--set", f"steps={max(steps) + 2}"], 120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"finished at step {max(steps) + 2}" in resumed.stderr
    rows = read_csv(tmp_path / "run" / "train.csv")
    assert [r["step"] for r in rows] == list(range(1, max(steps) + 3))


def test_stop_right_after_a_checkpoint_writes_it_once(tmp_path):
    events: list[TrainEvent] = []
    result = train(
        config_from_dict(tiny_config(tmp_path, steps=10)),
        callback=events.append,
        should_stop=lambda: sum(e.kind == "checkpoint" for e in events) >= 1,  # stops after step 2's
    )
    assert result.stopped == "interrupted" and result.step == 2
    assert [e.step for e in events if e.kind == "checkpoint"] == [2]
    assert result.last_checkpoint is not None and result.last_checkpoint.name == "step_00000002.safetensors"


def test_validation_sources_default_to_the_test_split(tmp_path):
    from adeblur.engine.config import SourceConfig

    root = tmp_path / "GOPRO_Large"
    source = SourceConfig("gopro", root=str(root))
    for split in ("train", "test"):
        for kind in ("blur", "sharp"):
            folder = root / split / "GOPR0001_11_00" / kind
            folder.mkdir(parents=True)
            from adeblur.io import write_image

            write_image(folder / f"{split}.png", torch.full((3, 8, 8), 0.5))
    assert build_source(source, patch_size=None).names == ["GOPR0001_11_00/train"]
    assert build_source(source, patch_size=None, default_split="test").names == ["GOPR0001_11_00/test"]


def test_cli_set_takes_several_values_and_rejects_bad_minutes(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, steps=50)))
    assert main(["train", str(path), "--set", "steps=1", "val_every=1"]) == 0
    assert "finished at step 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--max-minutes", "-1"])
    assert exit_info.value.code == 2


def test_cli_out_of_memory_is_one_line(monkeypatch, capsys):
    import adeblur.cli as cli

    def explode(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")

    monkeypatch.setitem(cli._HANDLERS, "models", explode)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory" in err and "--tile" in err


def test_v2_recipe_validates_and_holds_set14_and_the_measured_kernels_out():
    config = load_config(ROOT / "configs" / "v2" / "m2aenet-lite.yaml")
    assert config.name == "m2aenet-lite-v2" and config.model.name == "m2aenet-lite"
    trained = [str(path) for source in config.data.train for path in (source.images or [])]
    assert trained and not any("set14" in path for path in trained)
    assert all("set14" in str(path) for path in config.data.val.images)
    kernels = config.data.val.options["global_options"]["kernels"]
    assert kernels and all(source.options["global_options"].get("kernels") is None for source in config.data.train)
