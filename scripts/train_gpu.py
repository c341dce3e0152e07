"""Train within a time budget on one GPU, then package and score the weights: issue 15's GPU recipe.

Here (no GPU needed), once: copy the training content into the repository, where the device tool carries it

    python scripts/train_gpu.py --stage .gpu-data        # ~35 MB from ../shared/data; .gpu-data/ is git-ignored

and download the two pure-Python wheels the GPU machine's image lacks (pypng, tensorboardX) into .whl/
(see docs/training.md, "On a lent GPU"). There, with .gpu-data and .whl carried:

    python scripts/train_gpu.py --data .gpu-data --out "$OUT" --minutes 9

What it does: (1) a timing probe of ``--probe-steps`` steps measures patches per second; (2) the run
itself, with ``steps`` set so that training fits the budget (the cosine schedule then ends on time,
not cut half-way), ``--max-minutes`` as a safety stop; (3) the best-validation checkpoint becomes fp16
safetensors in ``--out`` (scripts/package_weights.py); (4) scripts/cross_generator.py scores them against
the blurred input on held-out content and measured PSFs (``cross_generator.json``). The run folder is
``--out``/run. ``--set key=value`` entries are passed to ``adeblur train`` (the tests use them for a
two-step CPU run); ``--steps N`` skips the probe.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONFIG = ROOT / "configs" / "gpu" / "m2aenet-lite.yaml"
TRAIN_SETS = ("bsds500_train", "bsds500_val_nocbsd68", "bsds500_test", "cbsd68", "mcmaster", "curban100", "csun_hays80")
VAL_SETS = ("set14",)
STAGED_LONG_SIDE = 400
STAGED_QUALITY = 92


def stage(destination: Path, shared: Path = SHARED) -> None:
    """Copy the training and validation photos (downscaled, JPEG), the measured kernels and Levin et al.'s
    real captures into ``destination``."""
    from PIL import Image

    if destination.exists():
        raise SystemExit(f"train_gpu: {destination} exists; remove it first")
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for folder, sets in (("train", TRAIN_SETS), ("val", VAL_SETS)):
        (staging / folder).mkdir(parents=True)
        for name in sets:
            for path in sorted((shared / "sharp" / name).iterdir()):
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    image.thumbnail((STAGED_LONG_SIDE, STAGED_LONG_SIDE), Image.Resampling.LANCZOS)
                    image.save(staging / folder / f"{name}_{path.stem}.jpg", quality=STAGED_QUALITY)
    shutil.copytree(shared / "kernels", staging / "kernels")
    if (shared / "real" / "levin2009").is_dir():
        shutil.copytree(shared / "real" / "levin2009", staging / "levin2009")
    staging.rename(destination)


def _adeblur(*args: str, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "adeblur", *args]
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"train_gpu: {' '.join(command)} failed with exit status {result.returncode}")


def _rate(run: Path) -> float:
    """Patches per second of the probe's last logged interval."""
    from adeblur.engine.logging import read_csv

    rows = [row for row in read_csv(run / "train.csv") if row.get("patches_per_second")]
    if not rows:
        raise SystemExit(f"train_gpu: the probe logged no speed in {run / 'train.csv'} (raise --probe-steps)")
    return float(rows[-1]["patches_per_second"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=Path, metavar="DIR", help="only copy the data into DIR, then stop")
    parser.add_argument("--data", type=Path, help="staged data (train/, val/, kernels/); default $ADEBLUR_DATA")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu")))
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--minutes", type=float, default=9.0, help="training budget (wall clock)")
    parser.add_argument("--probe-steps", type=int, default=60)
    parser.add_argument("--steps", type=int, help="fixed step count (no probe)")
    parser.add_argument("--batch", type=int, help="override data.batch_size")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="passed to adeblur train")
    parser.add_argument("--score-count", type=int, default=64, help="pairs per cross-generator set")
    args = parser.parse_args(argv)
    if args.stage:
        stage(args.stage)
        return 0

    sys.path.insert(0, str(ROOT / "src"))  # adeblur from this checkout, installed or not (the GPU machine)
    data = args.data or (Path(os.environ["ADEBLUR_DATA"]) if "ADEBLUR_DATA" in os.environ else None)
    if data is None or not (data / "train").is_dir():
        raise SystemExit("train_gpu: no staged data: pass --data DIR (made by --stage DIR) or set ADEBLUR_DATA")
    env = {**os.environ, "ADEBLUR_DATA": str(data.resolve()), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    overrides = list(args.set) + ([f"data.batch_size={args.batch}"] if args.batch else [])
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    steps = args.steps
    if steps is None:
        probe = args.out / "probe"
        shutil.rmtree(probe, ignore_errors=True)
        _adeblur("train", str(args.config), "--set", f"output={probe}", f"steps={args.probe_steps}",
                 "log_every=10", "data.val=null", *overrides, env=env)  # fmt: skip
        from adeblur.engine.config import load_config

        batch = load_config(args.config, overrides).data.batch_size
        left = args.minutes * 60 - (time.monotonic() - started)
        steps = max(10, math.floor(0.92 * left * _rate(probe) / batch))  # 8 %: validation and checkpoints
    run = args.out / "run"
    if run.exists():
        raise SystemExit(f"train_gpu: {run} exists; choose another --out")
    minutes_left = max(0.5, args.minutes - (time.monotonic() - started) / 60)
    _adeblur("train", str(args.config), "--max-minutes", f"{minutes_left:.2f}",
             "--set", f"output={run}", f"steps={steps}", *overrides, env=env)  # fmt: skip

    weights = args.out / "m2aenet-lite.safetensors"
    checkpoint = "best" if (run / "checkpoints" / "best.safetensors").exists() else "last"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "package_weights.py"), str(run), "--checkpoint", checkpoint,
                    "--out", str(weights)], env=env, check=True)  # fmt: skip
    subprocess.run([sys.executable, str(ROOT / "scripts" / "cross_generator.py"), "--model", "identity",
                    "--model", f"gpu={weights}", "--content", str(data / "val"), "--kernels", str(data / "kernels"), "--levin", str(data / "levin2009"),
                    "--count", str(args.score_count), "--device", "auto", "--json",
                    str(args.out / "cross_generator.json")], env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
