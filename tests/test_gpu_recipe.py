"""The GPU recipe (configs/gpu/m2aenet-lite.yaml + scripts/train_gpu.py) and the cross-generator scorer,
run end to end on the CPU at toy size: staging, the timing probe, training, packaging, scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adeblur.data.synth import dead_leaves
from adeblur.engine.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TOY = [
    "device=cpu", "threads=1", "data.batch_size=2", "data.patch_size=32", "data.workers=0", "data.pool.size=4",
    "data.val_count=2", "data.val_size=32", "val_every=2", "checkpoint_every=2", "log_every=1",
    "schedule.warmup_steps=0",
]  # fmt: skip


def write_photos(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    for number, image in enumerate(dead_leaves(count, 48, 64, generator=seed)):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"photo_{number}.png")


@pytest.fixture()
def staged(tmp_path) -> Path:
    data = tmp_path / "data"
    write_photos(data / "train", 3, 0)
    write_photos(data / "val", 2, 1)
    (data / "kernels").mkdir()
    kernel = np.zeros((5, 5), np.float32)
    kernel[2] = 1
    np.save(data / "kernels" / "line.npy", kernel)
    return data


def test_gpu_config_is_valid_and_expands_the_data_root(staged, monkeypatch):
    monkeypatch.setenv("ADEBLUR_DATA", str(staged))
    config = load_config(ROOT / "configs" / "gpu" / "m2aenet-lite.yaml")
    assert config.amp == "auto" and config.channels_last == "auto" and config.data.synthesize_on == "device"
    assert config.model.name == "m2aenet-lite" and config.data.batch_size >= 32


def test_train_gpu_script_end_to_end_on_cpu(staged, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "scripts" / "train_gpu.py"), "--data", str(staged), "--out", str(out),
               "--minutes", "0.02", "--probe-steps", "2", "--score-count", "2", "--set", *TOY]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "probe" / "train.csv").is_file()
    assert (out / "m2aenet-lite.safetensors").is_file()
    report = json.loads((out / "cross_generator.json").read_text())
    assert set(report["sets"]) == {"local-layered", "global-measured"}
    gains = report["sets"]["global-measured"]["models"]
    assert gains["identity"]["gain"]["psnr"] == 0 and "gpu" in gains
    # The run is not reused: a second call into the same folder stops with a one-line error.
    again = subprocess.run(command + [], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0


def test_train_gpu_needs_staged_data(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ADEBLUR_DATA"}
    env["PYTHONPATH"] = str(ROOT / "src")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_gpu.py"), "--out", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0 and "no staged data" in result.stderr
