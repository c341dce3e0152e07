"""Turn a finished training run into the weights file shipped inside the package (fp16 safetensors).

    python scripts/package_weights.py runs/ship/m2aenet-lite            # -> src/adeblur/weights/m2aenet-lite.safetensors
    python scripts/package_weights.py runs/ship/nafnet-lite --checkpoint best

Reads the run's checkpoint (``best`` by default: the best validation score; ``last``: the newest
``step_*``), keeps the model weights only (the EMA weights when the run kept an EMA), converts them to
float16, and records in the file's metadata what ``adeblur`` needs to rebuild the model (name, options,
training patch size) plus a short training summary (steps, validation scores, the run's config).
The file is written atomically; an existing one is replaced only when the new one is complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from adeblur.engine.checkpoint import checkpoint_step, load_weights, save_weights
from adeblur.engine.logging import read_csv

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "adeblur" / "weights"
SIZE_LIMIT_BYTES = 20 * 1000 * 1000  # all shipped weights together (issue 6)


def _checkpoint(run: Path, which: str) -> Path:
    if which == "best":
        return run / "checkpoints" / "best.safetensors"
    steps = sorted((run / "checkpoints").glob("step_*.safetensors"), key=checkpoint_step)
    if not steps:
        raise SystemExit(f"error: no step_*.safetensors in {run / 'checkpoints'}")
    return steps[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run folder (holds config.yaml, checkpoints/, val.csv)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--out", type=Path, help="default: src/adeblur/weights/<model>.safetensors")
    args = parser.parse_args()

    path = _checkpoint(args.run, args.checkpoint)
    if not path.is_file():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 1
    state_dict, metadata = load_weights(path)
    config = metadata["config"]
    name = config["model"]["name"]
    step = int(metadata.get("step", checkpoint_step(path) if path.name.startswith("step_") else -1))
    validation = [row for row in read_csv(args.run / "val.csv") if row["step"] == step]
    summary = {
        "model": name,
        "options": config["model"].get("options") or {},
        "patch_size": config["data"]["patch_size"],
        "training": {
            "run": config["name"],
            "step": step,
            "steps": config["steps"],
            "checkpoint": args.checkpoint,
            "validation": validation[-1] if validation else None,
            "config": config,
        },
    }
    out = args.out or WEIGHTS / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, state_dict, metadata=summary, dtype=torch.float16)
    total = sum(p.stat().st_size for p in WEIGHTS.glob("*.safetensors")) if WEIGHTS.is_dir() else 0
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB (step {step}); all shipped weights: {total / 1e6:.2f} MB")
    if total > SIZE_LIMIT_BYTES:
        print(f"error: shipped weights exceed {SIZE_LIMIT_BYTES / 1e6:.0f} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
