"""Checkpoints and weights files (adeblur.engine.checkpoint): exact resume, atomic writes, no pickle."""

from __future__ import annotations

import copy
import json
import os
import pickle
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from adeblur.engine import checkpoint as checkpoint_module
from adeblur.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    WEIGHTS_FORMAT,
    CheckpointManager,
    capture_rng_states,
    load_checkpoint,
    load_weights,
    restore_rng_states,
    save_checkpoint,
    save_weights,
)
from adeblur.errors import AdeblurError, CheckpointError, ConfigError
from adeblur.models import build_model


def small_model() -> nn.Module:
    return build_model("nafnet-lite", width=8, encoder_blocks=(1, 1), decoder_blocks=(1, 1))


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, steps: int, seed: int) -> None:
    """``steps`` optimisation steps on inputs drawn from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        blurred = torch.rand(2, 3, 16, 16, generator=generator)
        sharp = torch.rand(2, 3, 16, 16, generator=generator)
        optimizer.zero_grad()
        (model(blurred) - sharp).abs().mean().backward()
        optimizer.step()
        scheduler.step()


def assert_identical(actual, expected, where: str = "") -> None:
    """Same structure, same Python types (tuple stays tuple), tensors bit-identical with the same dtype."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), where  # safetensors stores names sorted
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for number, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}/{number}")
    else:
        assert actual == expected, where


OPTIMIZERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.9), weight_decay=1e-3),
    "adam-amsgrad": lambda params: torch.optim.Adam(params, lr=1e-3, amsgrad=True),
    "sgd-nesterov": lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_resumed_training_continues_exactly_like_the_uninterrupted_run(tmp_path, optimizer_name):
    make_optimizer = OPTIMIZERS[optimizer_name]
    model = small_model()
    optimizer = make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10, eta_min=1e-6)
    train_steps(model, optimizer, scheduler, steps=2, seed=1)
    path = save_checkpoint(
        tmp_path / "ckpt.safetensors",
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        metadata={"step": 2, "scheduler": scheduler.state_dict(), "config": {"patch": [256, 256]}},
    )
    saved_optimizer_state = copy.deepcopy(optimizer.state_dict())  # training updates its tensors in place
    train_steps(model, optimizer, scheduler, steps=2, seed=2)  # the uninterrupted run

    torch.manual_seed(123)  # a different initialisation, overwritten by the checkpoint
    resumed = small_model()
    resumed_optimizer = make_optimizer(resumed.parameters())
    resumed_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(resumed_optimizer, T_max=10, eta_min=1e-6)
    checkpoint = load_checkpoint(path)
    assert_identical(checkpoint.optimizer_state, saved_optimizer_state, "optimizer")
    resumed.load_state_dict(checkpoint.model_state)
    resumed_optimizer.load_state_dict(checkpoint.optimizer_state)
    resumed_scheduler.load_state_dict(checkpoint.metadata["scheduler"])
    assert checkpoint.metadata["step"] == 2 and checkpoint.metadata["config"]["patch"] == [256, 256]
    train_steps(resumed, resumed_optimizer, resumed_scheduler, steps=2, seed=2)

    for (name, expected), actual in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(actual, expected), name
    assert_identical(resumed_optimizer.state_dict(), optimizer.state_dict(), "optimizer after resume")
    assert resumed_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_optimizer_states_with_tuples_nested_lists_and_python_numbers_round_trip(tmp_path):
    weight = nn.Parameter(torch.tensor([1.5, -2.0]))
    for optimizer in (torch.optim.Rprop([weight]), torch.optim.LBFGS([weight], history_size=3)):

        def closure(optimizer=optimizer):
            optimizer.zero_grad()
            loss = (weight**2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        optimizer.step(closure)
        state = optimizer.state_dict()
        path = save_checkpoint(tmp_path / "o.safetensors", model_state={}, optimizer_state=state)
        assert_identical(load_checkpoint(path).optimizer_state, state, type(optimizer).__name__)


def test_ema_round_trip_and_load_weights_choice(tmp_path):
    model = small_model()
    model_state = model.state_dict()
    ema_state = {name: t * 0.5 if t.is_floating_point() else t for name, t in model_state.items()}
    path = save_checkpoint(tmp_path / "c.safetensors", model_state=model_state, ema_state=ema_state)
    checkpoint = load_checkpoint(path)
    assert_identical(checkpoint.model_state, dict(model_state))
    assert_identical(checkpoint.ema_state, ema_state)
    assert_identical(load_weights(path)[0], ema_state)
    assert_identical(load_weights(path, prefer_ema=False)[0], dict(model_state))

    without_ema = save_checkpoint(tmp_path / "n.safetensors", model_state=model_state, metadata={"step": 4})
    assert load_checkpoint(without_ema).ema_state is None
    state_dict, metadata = load_weights(without_ema)
    assert_identical(state_dict, dict(model_state))
    assert metadata == {"step": 4}
    small_model().load_state_dict(state_dict)


def test_tied_views_and_non_contiguous_tensors_are_stored_by_value(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    parameter = nn.Parameter(torch.ones(2, 2))  # requires grad: must be detached
    state = {
        "tied_a": base,
        "tied_b": base,
        "row": base[1],
        "transposed": base.t(),
        "channels_last": torch.rand(1, 3, 2, 2).to(memory_format=torch.channels_last),
        "parameter": parameter,
    }
    path = save_checkpoint(tmp_path / "t.safetensors", model_state=state)
    loaded = load_checkpoint(path).model_state
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor.detach()), name
    loaded["tied_a"].zero_()
    assert loaded["tied_b"].sum() == base.sum()  # independent copies, not aliases


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    generator = torch.Generator().manual_seed(7)
    torch.rand(3, generator=generator)
    states = capture_rng_states({"data": generator})
    assert set(states) == {"torch", "generator/data"}  # CUDA is not initialised in the tests
    assert all(state.dtype == torch.uint8 for state in states.values())
    path = save_checkpoint(tmp_path / "r.safetensors", model_state={}, rng_states=states)
    expected_global, expected_generator = torch.rand(5), torch.rand(5, generator=generator)

    torch.manual_seed(99)
    other = torch.Generator().manual_seed(99)
    restore_rng_states(load_checkpoint(path).rng_states, {"data": other})
    assert torch.equal(torch.rand(5), expected_global)
    assert torch.equal(torch.rand(5, generator=other), expected_generator)


def test_restore_rng_states_rejects_missing_and_unusable_states():
    states = capture_rng_states()
    with pytest.raises(CheckpointError, match="generator/data"):
        restore_rng_states(states, {"data": torch.Generator()})
    with pytest.raises(CheckpointError, match="'torch'"):
        restore_rng_states({"torch": torch.zeros(3, dtype=torch.uint8)})
    with pytest.raises(CheckpointError, match="torch"):
        restore_rng_states({})
    ignored = {"cuda/0": torch.zeros(8, dtype=torch.uint8), "generator/unused": states["torch"]}
    restore_rng_states({**states, **ignored})


def names(paths: Iterable[Path]) -> list[str]:
    return [path.name for path in paths]


def test_manager_keeps_the_last_k_by_step_and_never_best_or_the_new_one(tmp_path):
    manager = CheckpointManager(tmp_path / "run", keep_last=2)
    assert manager.checkpoints() == [] and manager.latest() is None
    manager.save_best(model_state={"w": torch.zeros(1)}, metadata={"score": 1.0})
    for step in (1, 2, 3, 10, 200_000_000):  # past 8 digits the names stop sorting as text: steps decide
        manager.save(step, model_state={"w": torch.full((1,), float(step))}, metadata={"step": step})
    assert names(manager.checkpoints()) == ["step_00000010.safetensors", "step_200000000.safetensors"]
    assert (manager.directory / "best.safetensors").exists()
    assert load_checkpoint(manager.latest()).metadata == {"step": 200_000_000}

    manager.save(5, model_state={"w": torch.zeros(1)})  # older than the kept ones: kept anyway
    assert names(manager.checkpoints()) == [
        "step_00000005.safetensors",
        "step_00000010.safetensors",
        "step_200000000.safetensors",
    ]
    manager.save(300_000_000, model_state={"w": torch.zeros(1)})
    assert names(manager.checkpoints()) == ["step_200000000.safetensors", "step_300000000.safetensors"]
    assert load_checkpoint(tmp_path / "run" / "best.safetensors").metadata == {"score": 1.0}


def test_latest_skips_truncated_garbage_and_temporary_files(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=10)
    manager.save(1, model_state={"w": torch.rand(100)})
    good = manager.save(2, model_state={"w": torch.rand(100)})
    data = good.read_bytes()
    (tmp_path / "step_00000003.safetensors").write_bytes(data[: len(data) // 2])  # a copy cut short
    (tmp_path / "step_00000004.safetensors").write_bytes(b"\x00garbage" * 10)
    save_weights(tmp_path / "step_00000005.safetensors", {"w": torch.rand(1)})  # not a checkpoint
    temporary = tmp_path / ".step_00000006.safetensors.tmp-4242-0a1b2c3d"  # left by a killed run
    temporary.write_bytes(data)
    assert [path.name for path in manager.checkpoints()][-1] == "step_00000005.safetensors"
    assert manager.latest() == good

    unrelated = [tmp_path / ".notes.tmp-1-ab", tmp_path / ".other.safetensors.tmp-1-ab", tmp_path / "x.tmp"]
    for path in unrelated:
        path.write_bytes(b"keep me")
    CheckpointManager(tmp_path)
    assert not temporary.exists()
    assert all(path.exists() for path in unrelated)


def test_manager_rejects_bad_arguments(tmp_path):
    for keep_last in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="keep_last"):
            CheckpointManager(tmp_path, keep_last=keep_last)
    with pytest.raises(ValueError, match="step"):
        CheckpointManager(tmp_path).save(-1, model_state={})


def test_load_weights_of_a_plain_weights_file_converts_half_to_float32(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model(torch.rand(2, 3, 5, 5))  # updates num_batches_tracked (int64)
    path = save_weights(tmp_path / "w.pt", model.state_dict(), metadata={"model": "x"}, dtype=torch.float16)
    with checkpoint_module.safe_open(path, framework="pt") as file:
        assert file.metadata()["format"] == WEIGHTS_FORMAT
        assert file.get_tensor("0.weight").dtype == torch.float16
    state_dict, metadata = load_weights(path)
    assert metadata == {"model": "x"}
    for name, tensor in model.state_dict().items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert_identical(state_dict[name], expected, name)

    plain = save_weights(tmp_path / "plain.safetensors", {"w": torch.rand(2, dtype=torch.float64)})
    state_dict, metadata = load_weights(plain)
    assert metadata == {} and state_dict["w"].dtype == torch.float32


def test_load_weights_accepts_foreign_safetensors_files_and_map_location(tmp_path):
    save_file({"conv.weight": torch.ones(2, 2)}, tmp_path / "upstream.safetensors", metadata={"format": "pt"})
    state_dict, metadata = load_weights(tmp_path / "upstream.safetensors")
    assert list(state_dict) == ["conv.weight"] and metadata == {}

    path = save_checkpoint(
        tmp_path / "c.safetensors",
        model_state={"w": torch.ones(2)},
        optimizer_state=torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9).state_dict(),
        rng_states=capture_rng_states(),
    )
    checkpoint = load_checkpoint(path, map_location="meta")
    assert checkpoint.model_state["w"].device.type == "meta"
    assert checkpoint.rng_states["torch"].device.type == "cpu"  # set_state wants CPU tensors
    assert load_weights(path, map_location=torch.device("meta"))[0]["w"].device.type == "meta"


def test_metadata_is_json_with_non_finite_floats_and_non_json_is_refused(tmp_path):
    metadata = {"step": 3, "best": float("inf"), "loss": float("nan"), "size": (256, 256), "a": {"b": [1, 2]}}
    path = save_checkpoint(tmp_path / "m.safetensors", model_state={}, metadata=metadata)
    loaded = load_checkpoint(path).metadata
    assert loaded["best"] == float("inf") and loaded["loss"] != loaded["loss"]
    assert loaded["size"] == [256, 256] and loaded["a"] == {"b": [1, 2]}
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "bad.safetensors", model_state={}, metadata={"model": nn.Linear(1, 1)})
    with pytest.raises(TypeError, match="'w'"):
        save_checkpoint(tmp_path / "bad.safetensors", model_state={"w": [1.0]})
    with pytest.raises(TypeError, match="JSON"):
        save_weights(tmp_path / "bad.safetensors", {}, metadata={"dtype": torch.float16})
    assert not (tmp_path / "bad.safetensors").exists()


def write_raw_checkpoint(path: Path, header: dict[str, str], tensors=None) -> Path:
    save_file(tensors or {"model/w": torch.ones(1)}, path, metadata=header)
    return path


def test_load_errors_are_one_line_checkpoint_errors_naming_the_file(tmp_path):
    good = save_checkpoint(tmp_path / "good.safetensors", model_state={"w": torch.rand(64)})
    data = good.read_bytes()
    (tmp_path / "garbage.safetensors").write_bytes(b"this is not a safetensors file at all")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "truncated.safetensors").write_bytes(data[:-8])
    save_weights(tmp_path / "weights.safetensors", {"w": torch.ones(1)})
    contents = json.dumps({"metadata": {}, "optimizer": None, "ema": False})
    write_raw_checkpoint(tmp_path / "v2.safetensors", {"format": "adeblur-checkpoint/2", "adeblur": contents})
    write_raw_checkpoint(tmp_path / "pt.safetensors", {"format": "pt"})
    for name, text in {
        "badjson": "{not json",
        "nokeys": "{}",
        "dangling": json.dumps({
            "metadata": {},
            "optimizer": {"state": {"0": {"exp_avg": {"__tensor__": "nope"}}}, "param_groups": []},
            "ema": False,
        }),
    }.items():
        write_raw_checkpoint(tmp_path / f"{name}.safetensors", {"format": CHECKPOINT_FORMAT, "adeblur": text})
    cases = {
        "missing.safetensors": "does not exist",
        "garbage.safetensors": "not a complete safetensors file",
        "empty.safetensors": "not a complete safetensors file",
        "truncated.safetensors": "not a complete safetensors file",
        "weights.safetensors": "is a weights file, not a training checkpoint",
        "v2.safetensors": "'adeblur-checkpoint/2', which this version of adeblur cannot read",
        "pt.safetensors": "not an adeblur checkpoint",
        "badjson.safetensors": "not valid JSON",
        "nokeys.safetensors": "malformed",
        "dangling.safetensors": "corrupt optimizer state",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as raised:
            load_checkpoint(tmp_path / name)
        assert isinstance(raised.value, AdeblurError)
        assert "\n" not in str(raised.value) and name in str(raised.value), str(raised.value)
    for name in ("missing.safetensors", "garbage.safetensors", "truncated.safetensors"):
        with pytest.raises(CheckpointError, match=name):
            load_weights(tmp_path / name)
    write_raw_checkpoint(tmp_path / "w2.safetensors", {"format": "adeblur-weights/2"})
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(tmp_path / "w2.safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path)  # a folder


def test_a_crash_while_writing_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=5)
    previous = manager.save(1, model_state={"w": torch.ones(3)}, metadata={"step": 1})
    best = manager.save_best(model_state={"w": torch.ones(3)}, metadata={"step": 1})

    def failing_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*step_00000002.*No space left"):
        manager.save(2, model_state={"w": torch.zeros(3)}, metadata={"step": 2})
    with pytest.raises(CheckpointError, match="No space left"):
        manager.save_best(model_state={"w": torch.zeros(3)}, metadata={"step": 2})
    monkeypatch.undo()

    real_save_file = checkpoint_module.save_file

    def interrupted_save_file(tensors, filename, metadata):
        real_save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:20])  # half-written when the signal comes
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_file", interrupted_save_file)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(previous, model_state={"w": torch.zeros(3)}, metadata={"step": 3})
    monkeypatch.undo()

    assert sorted(names(tmp_path.iterdir())) == ["best.safetensors", "step_00000001.safetensors"]
    assert manager.latest() == previous
    for path in (previous, best):
        checkpoint = load_checkpoint(path)
        assert checkpoint.metadata == {"step": 1} and torch.equal(checkpoint.model_state["w"], torch.ones(3))


def test_writes_are_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    save_weights(tmp_path / "w.safetensors", {"w": torch.ones(2)})
    assert events == ["fsync", "replace", "fsync"]  # the file, the rename, then the folder


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model = small_model()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.rand(1, 3, 16, 16)).mean().backward()
    optimizer.step()
    manager = CheckpointManager(tmp_path)
    path = manager.save(
        1,
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        ema_state=model.state_dict(),
        rng_states=capture_rng_states(),
        metadata={"step": 1},
    )
    weights = save_weights(tmp_path / "w.safetensors", model.state_dict(), metadata={"model": "nafnet-lite"})

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    assert manager.latest() == path
    checkpoint = load_checkpoint(path)
    optimizer.load_state_dict(checkpoint.optimizer_state)
    restore_rng_states(checkpoint.rng_states)
    load_weights(path)
    load_weights(weights)
