"""Why is the learning curve flat? Training-recipe variants at equal CPU time (issue 15), JSON + plot.

    python scripts/recipe_study.py run --budget 480 --rows base lr-2e-3 ...   # append results to runs/study/study.json
    python scripts/recipe_study.py report --out docs/recipe-study.png         # table (markdown) + learning curves

Every row starts from the same base: configs/v2/m2aenet-lite.yaml's data and validation (the
degradation model of issue 15; validation on Set14 with measured PSFs for global blur), with the
``nafnet-lite`` network and the ``reconstruction`` loss (no mask or reblur terms, so that only the recipe
varies), one CPU thread. A row changes one thing (``ROWS``). Equal CPU time, not equal steps: a
calibration of ``CALIBRATION_STEPS`` steps measures the row's process CPU seconds per step (after the
first ``WARMUP_STEPS``, so pool fills and refills are counted at their steady rate), then the run gets
``floor(budget / seconds_per_step)`` steps, so that its learning-rate schedule ends when the budget
does. Process CPU time, not wall time: the other core's load does not change a row's budget.
Validation every sixth of the run; the score is the last validation's PSNR and PSNR_w gains over the
blurred input.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "v2" / "m2aenet-lite.yaml"
BASE = ["model.name=nafnet-lite", "loss.name=reconstruction", "threads=1", "data.val_count=32", "keep_last=1"]
CALIBRATION_STEPS, WARMUP_STEPS = 40, 12

ROWS: dict[str, tuple[str, list[str]]] = {
    "base": ("AdamW 1e-3 cosine, 4 x 128^2, L1+SSIM+FFT, pool 512 x 4, no EMA, width 16 [1,1,1,8]", []),
    "lr-2e-3": ("learning rate 2e-3", ["optimizer.lr=2.0e-3"]),
    "lr-5e-4": ("learning rate 5e-4", ["optimizer.lr=5.0e-4"]),
    "warmup": ("lr 2e-3 with 200 warm-up steps", ["optimizer.lr=2.0e-3", "schedule.warmup_steps=200"]),
    "batch16-patch64": ("16 x 64^2 (same pixels per step)", ["data.batch_size=16", "data.patch_size=64",
                                                             "data.pool.size=2048"]),  # fmt: skip
    "psnr-loss": ("PSNR loss (NAFNet's) instead of L1+SSIM+FFT", ["loss.name=psnr"]),
    "ema": ("EMA of the weights, decay 0.999 (validated)", ["ema_decay=0.999"]),
    "fresh-pairs": ("fresh pairs every step (no pool)", ["data.pool.size=0"]),
    "wide-shallow": ("width 24, encoder [1,1,2,2]", ["model.options.width=24", "model.options.encoder_blocks=[1, 1, 2, 2]"]),
}


def _cpu_seconds_per_step(overrides: list[str], folder: Path) -> float:
    from adeblur.engine.config import load_config
    from adeblur.engine.train import train

    shutil.rmtree(folder, ignore_errors=True)
    config = load_config(BASE_CONFIG, BASE + overrides + [f"steps={CALIBRATION_STEPS}", "data.val=null",
                                                          f"output={folder}", "checkpoint_every=100000", "log_every=1",
                                                          "schedule.warmup_steps=0"])  # fmt: skip
    marks: dict[int, float] = {}

    def on_event(event) -> None:
        if event.kind == "step":
            marks[event.step] = time.process_time()

    train(config, callback=on_event)
    shutil.rmtree(folder, ignore_errors=True)
    steps = sorted(s for s in marks if s >= WARMUP_STEPS)
    return (marks[steps[-1]] - marks[steps[0]]) / (steps[-1] - steps[0])


def run_row(name: str, seed: int, budget: float, out: Path) -> dict:
    from adeblur.engine.config import load_config
    from adeblur.engine.train import train
    from adeblur.models import build_model

    description, overrides = ROWS[name]
    overrides = overrides + [f"seed={seed}"]
    per_step = _cpu_seconds_per_step(overrides, out / "calibration")
    steps = max(60, math.floor(budget / per_step))
    folder = out / f"{name}-seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    config = load_config(BASE_CONFIG, BASE + overrides + [
        f"steps={steps}", f"output={folder}", f"val_every={max(1, steps // 6)}", f"checkpoint_every={steps}",
        f"name=study-{name}",
    ])  # fmt: skip
    curve: list[dict] = []

    def on_event(event) -> None:  # x axis: the training CPU time the budget gave the steps so far
        if event.kind == "validation":
            row = {k: v for k, v in event.data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            curve.append({"step": event.step, "cpu_seconds": event.step * per_step, **row})

    result = train(config, callback=on_event)
    params = sum(p.numel() for p in build_model(config.model.name, **config.model.options).parameters())
    first = curve[0]
    last = curve[-1]
    return {
        "row": name, "seed": seed, "description": description, "overrides": overrides, "steps": steps,
        "cpu_seconds_per_step": per_step, "budget_cpu_seconds": budget, "params": params,
        "input_psnr": first.get("input_psnr"), "input_psnr_w": first.get("input_psnr_w"),
        "psnr": last.get("psnr"), "psnr_w": last.get("psnr_w"),
        "gain_psnr": last.get("psnr", math.nan) - first.get("input_psnr", math.nan),
        "gain_psnr_w": last.get("psnr_w", math.nan) - first.get("input_psnr_w", math.nan),
        "curve": curve, "stopped": result.stopped,
    }  # fmt: skip


def report(results: list[dict], plot: Path | None) -> str:
    rows: dict[str, list[dict]] = {}
    for entry in results:
        rows.setdefault(entry["row"], []).append(entry)
    lines = ["| row | change | params | steps | s/step | seeds | PSNR gain | PSNR_w gain |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    order = sorted(rows, key=lambda r: -sum(e["gain_psnr_w"] for e in rows[r]) / len(rows[r]))
    for name in order:
        entries = rows[name]
        gains = [e["gain_psnr"] for e in entries]
        gains_w = [e["gain_psnr_w"] for e in entries]

        def spread(values: list[float]) -> str:
            mean = sum(values) / len(values)
            if len(values) == 1:
                return f"{mean:+.3f}"
            return f"{mean:+.3f} (±{(max(values) - min(values)) / 2:.3f})"

        steps = "/".join(str(e["steps"]) for e in entries)
        seconds = sum(e["cpu_seconds_per_step"] for e in entries) / len(entries)
        seeds = ",".join(str(e["seed"]) for e in entries)
        lines.append(f"| {name} | {entries[0]['description']} | {entries[0]['params'] / 1e6:.2f} M | {steps} | "
                     f"{seconds:.3f} | {seeds} | {spread(gains)} | {spread(gains_w)} |")  # fmt: skip
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        for name in order:
            for entry in rows[name]:
                points = [p for p in entry["curve"] if p["step"] > 0]  # step 0: the untrained network, far below
                xs = [p["cpu_seconds"] / 60 for p in points]
                for axis, key in zip(axes, ("psnr", "psnr_w")):
                    base = entry["input_psnr" if key == "psnr" else "input_psnr_w"]
                    axis.plot(xs, [p[key] - base for p in points], marker=".",
                              label=f"{name} s{entry['seed']}")  # fmt: skip
        for axis, key in zip(axes, ("PSNR", "PSNR_w")):
            axis.axhline(0, color="grey", lw=0.8)
            axis.set_xlabel("training CPU minutes (one thread)")
            axis.set_ylabel(f"validation {key} gain over the input (dB)")
        axes[1].legend(fontsize=7, ncol=2)
        plot.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(plot, dpi=110)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    run.add_argument("--seeds", nargs="+", type=int, default=[0])
    run.add_argument("--budget", type=float, default=480.0, help="CPU seconds of training per row")
    run.add_argument("--out", type=Path, default=Path("runs/study"))
    show = sub.add_parser("report")
    show.add_argument("--results", type=Path, default=Path("runs/study/study.json"))
    show.add_argument("--out", type=Path, help="learning-curve plot (PNG)")
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report(json.loads(args.results.read_text()), args.out))
        return 0
    import torch

    torch.set_num_threads(1)
    from adeblur.io import write_text

    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "study.json"
    results = json.loads(store.read_text()) if store.exists() else []
    for seed in args.seeds:
        for name in args.rows:
            entry = run_row(name, seed, args.budget, args.out)
            results = [r for r in results if (r["row"], r["seed"]) != (name, seed)] + [entry]
            write_text(store, json.dumps(results, indent=1) + "\n")
            print(f"{name} seed {seed}: {entry['steps']} steps, PSNR gain {entry['gain_psnr']:+.3f}, "
                  f"PSNR_w gain {entry['gain_psnr_w']:+.3f}", file=sys.stderr, flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
