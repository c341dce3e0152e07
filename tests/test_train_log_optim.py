"""Training support: CSV/TensorBoard logs (adeblur.engine.logging), optimisers, learning-rate schedules
and the EMA of weights (adeblur.engine.optim).

Oracles: the csv module and a hand-written TFRecord/CRC-32C reader for the files; the closed-form cosine
and torch's own LR schedulers for the schedules; a per-parameter float64 loop for the EMA.
"""

from __future__ import annotations

import csv
import math
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboardX.proto.event_pb2 import Event, SessionLog
from torch import nn

from adeblur.engine.logging import TrainingLog, read_csv
from adeblur.engine.optim import (
    ExponentialMovingAverage,
    build_optimizer,
    learning_rate,
    set_learning_rate,
    unwrap_model,
)
from adeblur.errors import AdeblurError, ConfigError

# --------------------------------------------------------------------------------------------------
# Event files, read independently of tensorboardX's writer


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_event_file(path: Path) -> list[Event]:
    """TFRecord framing: uint64 length, uint32 masked CRC of the length, data, uint32 masked CRC of the data."""
    blob = path.read_bytes()
    events, position = [], 0
    while position < len(blob):
        header = blob[position : position + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", blob[position + 8 : position + 12])
        data = blob[position + 12 : position + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[position + 12 + length : position + 16 + length])
        assert header_crc == _masked_crc(header) and data_crc == _masked_crc(data)
        event = Event()
        event.ParseFromString(data)
        events.append(event)
        position += 16 + length
    return events


def _event_files(run: Path) -> list[Path]:
    return sorted((run / "events").glob("*tfevents*"))


def _scalars(events: list[Event]) -> list[tuple[str, int, float]]:
    return [(value.tag, event.step, value.simple_value) for event in events for value in event.summary.value]


def _tensorboard_view(run: Path) -> list[tuple[str, int, float]]:
    """The scalars TensorBoard shows: files in name order; a SessionLog.START at step s discards the
    events seen so far with step >= s (TensorBoard's purge of orphaned data)."""
    shown: list[tuple[str, int, float]] = []
    for path in _event_files(run):
        for event in _read_event_file(path):
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                shown = [item for item in shown if item[1] < event.step]
            shown += _scalars([event])
    return shown


# --------------------------------------------------------------------------------------------------
# CSV logs


def test_csv_round_trip_is_exact(tmp_path):
    values = [1e-6, 1.2e-6, 0.1 + 0.2, 1 / 3, -0.0, 12345678.901234567, float(np.float32(0.7))]
    with TrainingLog(tmp_path, tensorboard=False) as log:
        for step, value in enumerate(values):
            log.log_train(step, {"loss": value, "lr": torch.tensor(value * 2, dtype=torch.float64)})
        log.log_train(len(values), {"loss": float("nan"), "lr": float("inf")})
        log.log_val(3, {"psnr": np.float32(30.25), "psnr_w": None})
    rows = read_csv(tmp_path / "train.csv")
    assert [row["step"] for row in rows] == list(range(len(values) + 1))
    assert [row["loss"] for row in rows[:-1]] == values
    assert [row["lr"] for row in rows[:-1]] == [value * 2 for value in values]
    assert math.isnan(rows[-1]["loss"]) and rows[-1]["lr"] == math.inf
    assert read_csv(tmp_path / "val.csv") == [{"step": 3, "psnr": 30.25, "psnr_w": None}]
    with open(tmp_path / "val.csv", newline="") as file:  # plain CSV for any other tool
        assert list(csv.reader(file)) == [["step", "psnr", "psnr_w"], ["3", "30.25", ""]]


def test_rows_are_on_disk_before_close(tmp_path):
    log = TrainingLog(tmp_path, tensorboard=False)
    log.log_train(1, {"loss": 0.5})
    assert read_csv(tmp_path / "train.csv") == [{"step": 1, "loss": 0.5}]
    log.close()


def test_new_key_widens_header_and_keeps_rows(tmp_path):
    with TrainingLog(tmp_path, tensorboard=False) as log:
        log.log_train(1, {"loss": 1.0, "lr": 0.1})
        log.log_train(2, {"loss": 2.0})
        log.log_train(3, {"grad_norm": 3.0, "loss": 3.5})
        log.log_train(4, {"lr": 0.4, "loss": 4.0, "grad_norm": 4.5})
    with open(tmp_path / "train.csv", newline="") as file:
        table = list(csv.reader(file))
    assert table[0] == ["step", "loss", "lr", "grad_norm"]
    assert all(len(row) == 4 for row in table)
    assert read_csv(tmp_path / "train.csv") == [
        {"step": 1, "loss": 1.0, "lr": 0.1, "grad_norm": None},
        {"step": 2, "loss": 2.0, "lr": None, "grad_norm": None},
        {"step": 3, "loss": 3.5, "lr": None, "grad_norm": 3.0},
        {"step": 4, "loss": 4.0, "lr": 0.4, "grad_norm": 4.5},
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train.csv", "val.csv"]  # no temporary left


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    with TrainingLog(tmp_path, tensorboard=False) as log:
        for step in range(1, 11):
            log.log_train(step, {"loss": 1.0 / step})
            if step % 5 == 0:
                log.log_val(step, {"psnr": 20.0 + step})
    with open(tmp_path / "train.csv", "a") as file:
        file.write("1")  # the row of step 11 cut short by the kill: no newline, reads as step 1
    with TrainingLog(tmp_path, resume_step=6, tensorboard=False) as log:
        assert [row["step"] for row in read_csv(tmp_path / "train.csv")] == [1, 2, 3, 4, 5, 6]
        assert read_csv(tmp_path / "val.csv") == [{"step": 5, "psnr": 25.0}]
        log.log_train(7, {"loss": 0.7, "lr": 1e-4})
        log.log_val(10, {"psnr": 31.0})
    train = read_csv(tmp_path / "train.csv")
    assert [row["step"] for row in train] == [1, 2, 3, 4, 5, 6, 7]
    assert train[0] == {"step": 1, "loss": 1.0, "lr": None} and train[-1] == {"step": 7, "loss": 0.7, "lr": 1e-4}
    assert read_csv(tmp_path / "val.csv") == [{"step": 5, "psnr": 25.0}, {"step": 10, "psnr": 31.0}]


def test_fresh_run_replaces_old_logs(tmp_path):
    with TrainingLog(tmp_path, tensorboard=False) as log:
        log.log_train(1, {"old": 1.0})
    with TrainingLog(tmp_path, tensorboard=False) as log:
        log.log_train(1, {"loss": 2.0})
    assert read_csv(tmp_path / "train.csv") == [{"step": 1, "loss": 2.0}]
    assert read_csv(tmp_path / "val.csv") == []


def test_bad_input(tmp_path):
    log = TrainingLog(tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match="step"):
        log.log_train(1, {"step": 1.0})
    with pytest.raises(TypeError, match="loss"):
        log.log_train(1, {"loss": "high"})
    log.log_train(1, {"lr": 0.1})
    assert (tmp_path / "train.csv").read_text() == "step,lr\n1,0.1\n"  # the bad row left no trace
    with pytest.raises(TypeError):
        log.log_train(1.5, {"loss": 1.0})
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.log_val(1, {"psnr": 1.0})
    (tmp_path / "other.csv").write_text("epoch,loss\n1,2\n")
    with pytest.raises(AdeblurError, match="other.csv"):
        read_csv(tmp_path / "other.csv")
    (tmp_path / "broken.csv").write_text("step,loss\n1,abc\n")
    with pytest.raises(AdeblurError, match="broken.csv line 2: loss"):
        read_csv(tmp_path / "broken.csv")
    with pytest.raises(AdeblurError, match="missing.csv"):
        read_csv(tmp_path / "missing.csv")
    (tmp_path / "train.csv").write_text("step,loss\nten,2\n")
    with pytest.raises(AdeblurError, match="train.csv line 2"):
        TrainingLog(tmp_path, resume_step=3, tensorboard=False)


# --------------------------------------------------------------------------------------------------
# TensorBoard event files


def test_events_hold_tags_steps_values(tmp_path):
    log = TrainingLog(tmp_path)
    log.log_train(1, {"loss": 0.5, "lr": 1e-3})
    log.log_train(2, {"loss": 0.25})
    log.log_val(2, {"psnr": 30.125, "psnr_w": None})
    (path,) = _event_files(tmp_path)  # every record is on disk at once, before flush() or close()
    events = _read_event_file(path)
    assert events[0].file_version == "brain.Event:2"
    expected = [("train/loss", 1, 0.5), ("train/lr", 1, np.float32(1e-3)), ("train/loss", 2, 0.25),
                ("val/psnr", 2, 30.125)]
    assert _scalars(events) == expected
    log.close()
    assert _scalars(_read_event_file(path)) == expected


def test_events_of_resumed_run_purge_the_stale_tail(tmp_path):
    with TrainingLog(tmp_path) as log:
        for step in range(1, 9):
            log.log_train(step, {"loss": float(step)})
    with TrainingLog(tmp_path, resume_step=5) as log:  # killed after step 8, checkpoint at step 5
        for step in range(6, 8):
            log.log_train(step, {"loss": step + 0.5})
    first, second = _event_files(tmp_path)
    purge = [event for event in _read_event_file(second) if event.HasField("session_log")]
    assert [(event.step, event.session_log.status) for event in purge] == [(6, SessionLog.START)]
    expected = [("train/loss", step, float(step)) for step in range(1, 6)]
    expected += [("train/loss", step, step + 0.5) for step in range(6, 8)]
    assert _tensorboard_view(tmp_path) == expected
    with TrainingLog(tmp_path) as log:  # a fresh run in the same directory hides all earlier events
        log.log_train(1, {"loss": 9.0})
    assert len(_event_files(tmp_path)) == 3
    assert _tensorboard_view(tmp_path) == [("train/loss", 1, 9.0)]


def test_tensorboard_off_writes_no_events(tmp_path):
    with TrainingLog(tmp_path, tensorboard=False) as log:
        log.log_train(1, {"loss": 1.0})
    assert not (tmp_path / "events").exists()


# --------------------------------------------------------------------------------------------------
# Learning-rate schedules


def test_cosine_endpoints_midpoint_and_tail():
    base, low, total = 1e-3, 1e-6, 1000

    def cosine(step):
        return learning_rate(step, base_lr=base, schedule="cosine", total_steps=total, min_lr=low)

    assert cosine(0) == base
    assert cosine(total // 2) == pytest.approx((base + low) / 2, rel=1e-12)
    assert cosine(total // 4) == pytest.approx(low + (base - low) * (1 + math.sqrt(0.5)) / 2, rel=1e-12)
    assert cosine(total) == low and cosine(total + 1) == low and cosine(10 * total) == low
    values = [cosine(step) for step in range(total + 1)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_cosine_matches_torch_cosine_annealing():
    base, low, total = 0.1, 1e-4, 40
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=low)
    for step in range(total + 1):
        ours = learning_rate(step, base_lr=base, schedule="cosine", total_steps=total, min_lr=low)
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        optimizer.step()
        scheduler.step()


def test_warmup_is_linear_then_joins_the_schedule():
    kwargs = dict(base_lr=1e-3, schedule="cosine", total_steps=110, min_lr=0.0, warmup_steps=10)
    warm = [learning_rate(step, **kwargs) for step in range(10)]
    assert warm == pytest.approx([1e-3 * (step + 1) / 10 for step in range(10)], rel=1e-12)
    assert learning_rate(10, **kwargs) == 1e-3
    assert learning_rate(60, **kwargs) == pytest.approx(0.5e-3, rel=1e-12)  # cosine over steps 10..110
    assert learning_rate(110, **kwargs) == 0.0
    constant = [learning_rate(step, base_lr=2.0, schedule="constant", total_steps=1, warmup_steps=4)
                for step in range(6)]
    assert constant == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_step_schedule_saphnet():
    def saphnet(step, **extra):
        return learning_rate(step, base_lr=1e-4, schedule="step", total_steps=10**6, step_size=200_000, **extra)

    assert saphnet(0) == saphnet(199_999) == 1e-4
    assert saphnet(200_000) == saphnet(399_999) == 5e-5
    assert saphnet(400_000) == 2.5e-5
    assert saphnet(2_000_000, min_lr=1e-6) == 1e-6  # 1e-4 / 1024 would be below the floor
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.25)
    for step in range(40):
        ours = learning_rate(step, base_lr=0.3, schedule="step", total_steps=40, step_size=7, gamma=0.25)
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_schedule_is_a_pure_function_of_the_step():
    kwargs = dict(base_lr=1e-3, schedule="cosine", total_steps=500, min_lr=1e-6, warmup_steps=20)
    in_order = [learning_rate(step, **kwargs) for step in range(600)]
    shuffled = list(range(600))
    random.Random(0).shuffle(shuffled)
    by_step = {step: learning_rate(step, **kwargs) for step in shuffled}
    assert [by_step[step] for step in range(600)] == in_order  # bit-identical, whatever came before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(schedule="linear"), "schedule 'linear'"),
        (dict(schedule="step"), "step_size"),
        (dict(schedule="step", step_size=10, gamma=0.0), "gamma"),
        (dict(schedule="cosine", base_lr=0.0), "base_lr"),
        (dict(schedule="cosine", min_lr=1.0), "min_lr"),
        (dict(schedule="cosine", warmup_steps=100), "warmup_steps"),
        (dict(schedule="cosine", warmup_steps=-1), "warmup_steps"),
        (dict(schedule="cosine", total_steps=0), "total_steps"),
    ],
)
def test_schedule_config_errors(kwargs, message):
    arguments = dict(base_lr=1e-3, total_steps=100) | kwargs
    with pytest.raises(ConfigError, match=message) as error:
        learning_rate(0, **arguments)
    assert "\n" not in str(error.value)


def test_set_learning_rate_sets_every_group():
    first, second = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([{"params": [first]}, {"params": [second], "lr": 0.5}], lr=0.1)
    set_learning_rate(optimizer, 0.02)
    assert [group["lr"] for group in optimizer.param_groups] == [0.02, 0.02]
    tensor_lr = torch.optim.Adam([first], lr=torch.tensor(0.1))
    lr_tensor = tensor_lr.param_groups[0]["lr"]
    set_learning_rate(tensor_lr, 0.03)
    assert tensor_lr.param_groups[0]["lr"] is lr_tensor and lr_tensor.item() == pytest.approx(0.03)


# --------------------------------------------------------------------------------------------------
# Optimisers


def test_build_optimizer_kinds():
    model = nn.Linear(3, 2)
    adamw = build_optimizer(model.parameters(), "AdamW", lr=1e-3, betas=(0.9, 0.9), weight_decay=1e-3)
    assert type(adamw) is torch.optim.AdamW
    assert (adamw.defaults["lr"], adamw.defaults["betas"], adamw.defaults["weight_decay"]) == (1e-3, (0.9, 0.9), 1e-3)
    adam = build_optimizer(model.parameters(), "adam", lr=1e-4, eps=1e-6)
    assert type(adam) is torch.optim.Adam and adam.defaults["eps"] == 1e-6
    sgd = build_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.5, weight_decay=1e-4)
    assert type(sgd) is torch.optim.SGD and (sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.5, 1e-4)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("lamb", {}, "unknown optimizer 'lamb'"),
        ("adam", dict(lr=0.0), "lr"),
        ("adam", dict(lr=float("nan")), "lr"),
        ("adam", dict(lr="1e-3"), "lr"),
        ("adamw", dict(betas=(0.9,)), "betas"),
        ("adamw", dict(betas=(0.9, 1.0)), "betas"),
        ("adamw", dict(weight_decay=-1e-3), "weight_decay"),
        ("adam", dict(eps=0.0), "eps"),
        ("sgd", dict(momentum=1.0), "momentum"),
    ],
)
def test_build_optimizer_errors(name, kwargs, message):
    arguments = dict(lr=1e-3) | kwargs
    with pytest.raises(ConfigError, match=message) as error:
        build_optimizer(nn.Linear(2, 2).parameters(), name, **arguments)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------------
# Exponential moving average


class _SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.norm = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 1, bias=False)

    def forward(self, image):
        return self.head(self.norm(self.conv(image)).mean((2, 3)))


def _perturb_(model: nn.Module, generator: torch.Generator) -> None:
    """A stand-in for one optimiser step: new parameters, and new batch-norm statistics."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    model.train()
    model(torch.rand(2, 2, 5, 5, generator=generator).to(next(model.parameters()).dtype))


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_slow_reference(warmup):
    model, generator, decay = _SmallNet(), torch.Generator().manual_seed(1), 0.9
    ema = ExponentialMovingAverage(model, decay=decay, warmup=warmup)
    reference = {name: p.detach().double().clone() for name, p in model.named_parameters()}
    for n in range(30):
        _perturb_(model, generator)
        ema.update(model)
        effective = min(decay, (1 + n) / (10 + n)) if warmup else decay
        for name, parameter in model.named_parameters():
            reference[name] = effective * reference[name] + (1 - effective) * parameter.detach().double()
    assert ema.num_updates == 30
    state = ema.state_dict()
    assert list(state) == list(model.state_dict())
    for name in reference:
        assert state[name].dtype == torch.float32
        torch.testing.assert_close(state[name].double(), reference[name], rtol=1e-5, atol=1e-5)
    for name, buffer in model.named_buffers():  # copied, not averaged
        assert torch.equal(state[name], buffer)


def test_ema_keeps_float32_for_low_precision_models():
    model = nn.Linear(4, 4).to(torch.bfloat16)
    ema = ExponentialMovingAverage(model, decay=0.99, warmup=False)
    start = ema.state_dict()["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert ema.state_dict()["weight"].dtype == torch.float32
    torch.testing.assert_close(ema.state_dict()["weight"], 0.99 * start + 0.01 * model.weight.float())


def test_applied_to_swaps_in_the_average_and_restores_exactly():
    model, generator = _SmallNet(), torch.Generator().manual_seed(2)
    ema = ExponentialMovingAverage(model)
    for _ in range(3):
        _perturb_(model, generator)
        ema.update(model)
    _perturb_(model, generator)  # the model now differs from the average
    own = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with ema.applied_to(model) as inside:
        assert inside is model
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, ema.state_dict()[name])
        assert not torch.equal(model.conv.weight, own["conv.weight"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, own[name])
    with pytest.raises(RuntimeError, match="inside"), ema.applied_to(model):
        raise RuntimeError("inside")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, own[name])


def test_state_dict_round_trip_continues_identically():
    model, generator = _SmallNet(), torch.Generator().manual_seed(3)
    ema = ExponentialMovingAverage(model, decay=0.99)
    for _ in range(4):
        _perturb_(model, generator)
        ema.update(model)
    checkpoint = {"ema": {k: v.clone() for k, v in ema.state_dict().items()}, "ema_num_updates": ema.num_updates}

    resumed = ExponentialMovingAverage(_SmallNet(), decay=0.99)
    resumed.load_state_dict(checkpoint["ema"])
    resumed.num_updates = checkpoint["ema_num_updates"]
    for _ in range(5):
        _perturb_(model, generator)
        ema.update(model)
        resumed.update(model)
    for name, tensor in ema.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor)

    fresh = _SmallNet()
    fresh.load_state_dict(ema.state_dict())  # strict: the same keys as the model's
    ema.copy_to(model)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_ema_load_state_dict_errors():
    ema = ExponentialMovingAverage(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="missing"):
        ema.load_state_dict({"weight": torch.zeros(2, 2)})
    with pytest.raises(ConfigError, match="'weight' has shape"):
        ema.load_state_dict({"weight": torch.zeros(3, 2), "bias": torch.zeros(2)})
    with pytest.raises(ConfigError, match="decay"):
        ExponentialMovingAverage(nn.Linear(2, 2), decay=1.5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch._dynamo import
def test_ema_looks_through_wrappers():
    model = _SmallNet()
    wrapped = nn.DataParallel(model)  # runs the plain module without GPUs; the same .module as DDP
    compiled = torch.compile(wrapped)  # builds the wrapper only, nothing is compiled until called
    assert unwrap_model(compiled) is model
    ema = ExponentialMovingAverage(compiled, decay=0.5, warmup=False)
    assert list(ema.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        model.head.weight.fill_(2.0)
    start = ema.state_dict()["head.weight"].clone()
    ema.update(compiled)
    torch.testing.assert_close(ema.state_dict()["head.weight"], (start + 2.0) / 2)
