"""Training throughput and where the step time goes: model versus data, for three data pipelines.

For each model (``nafnet-lite``, ``m2aenet-lite`` by default) and patch size (128, 256), trains a few
steps from the lite config (batch 4, synthetic local blur on dead leaves, validation off) with:

- ``loader``: blur made per sample in the data loader (in the training process: ``workers: 0``, the
  best setting on 2 cores), fresh pairs every step - the pipeline the issue measured;
- ``device``: sharp patches from the loader, blur made for the whole batch at once in PyTorch on the
  training device (:func:`adeblur.engine.data.finish_batch`), fresh pairs every step;
- ``device+pool``: the lite config's pipeline: the same, plus a pool of 256 pairs reused (one fresh
  batch every 4 steps); filling the pool counts as data time.

Prints JSON: per run ``patches_per_second`` (training steps only, validation excluded) and
``data_fraction`` (share of step time spent waiting for and making the batch, filling the pool
included), and the same without the one-off pool filling (``*_after_fill``: what a long run sees, since
the fill is amortised over its steps), plus the configuration and machine. Times of different pipelines
are comparable within one run of this script.

    python benchmarks/bench_train.py --steps 30 > benchmarks/results/bench_train.cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from adeblur.engine.config import load_config
from adeblur.engine.profile import resolve_device
from adeblur.engine.train import train

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = {
    "loader": ["data.synthesize_on=loader", "data.pool.size=0"],
    "device": ["data.synthesize_on=device", "data.pool.size=0"],
    "device+pool": ["data.synthesize_on=device", "data.pool.size=256", "data.pool.reuse=4"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nafnet-lite", "m2aenet-lite"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--steps", type=int, default=30, help="steps per run at 128x128 (fewer at larger sizes)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            steps = max(8, args.steps * 128 * 128 // (size * size))
            for model in args.models:
                for pipeline, settings in PIPELINES.items():
                    output = Path(scratch) / f"{model}-{size}-{pipeline.replace('+', '-')}"
                    overrides = [
                        f"output={output}", f"steps={steps}", f"data.patch_size={size}", f"data.batch_size={args.batch}",
                        "data.val=null", f"log_every={steps}", f"checkpoint_every={steps}", f"device={args.device}",
                        *settings,
                    ]  # fmt: skip
                    config = load_config(ROOT / "configs" / f"{model}.yaml", overrides)
                    result = train(config)
                    timing = result.timing
                    runs.append({
                        "model": model, "patch_size": size, "batch": args.batch, "pipeline": pipeline, "steps": steps,
                        "patches_per_second": round(timing["patches_per_second"], 3),
                        "data_fraction": round(timing["data_fraction"], 4),
                        "pool_fill_seconds": round(timing["pool_fill_seconds"], 2),
                        "data_fraction_after_fill": round(
                            (timing["data_seconds"] - timing["pool_fill_seconds"])
                            / (timing["seconds"] - timing["pool_fill_seconds"]), 4
                        ),
                        "patches_per_second_after_fill": round(
                            steps * args.batch / (timing["seconds"] - timing["pool_fill_seconds"]), 3
                        ),
                        "seconds": round(timing["seconds"], 2),
                    })  # fmt: skip
                    print(json.dumps(runs[-1]), file=sys.stderr)
    report = {
        "benchmark": "bench_train",
        "device": str(resolve_device(args.device)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "runs": runs,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
