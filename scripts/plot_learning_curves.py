"""Plot validation learning curves of one or more training runs side by side (PNG, matplotlib).

    python scripts/plot_learning_curves.py runs/ship/m2aenet-lite runs/ship/nafnet-lite \
        --out docs/model-card-curves.png

Left: validation PSNR and the blurred input's PSNR (dashed); right: the blur-mask-weighted PSNR_w the
same way. Each run's ``val.csv`` is read; the input scores come from its step-0 row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from adeblur.engine.logging import read_csv  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with a val.csv)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="validation (held-out Set14, local + global synthetic blur)")
    parser.add_argument("--xlabel", default="training step (4 patches of 128x128 each)")
    parser.add_argument("--from-step", type=int, default=0, help="leave out validations before this step")
    args = parser.parse_args()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    tables = {run: read_csv(run / "val.csv") for run in args.runs}
    # runs validated on the same split (same input scores) share one dashed input line
    shared_split = len({rows[0].get("input_psnr") for rows in tables.values()}) == 1
    drawn_baselines: set[tuple[str, float]] = set()
    for index, (run, rows) in enumerate(tables.items()):
        colour = f"C{index}"
        baselines = {key: rows[0].get(f"input_{key}") for key in ("psnr", "psnr_w")}
        rows = [row for row in rows if row["step"] >= args.from_step]
        steps = [row["step"] for row in rows]
        for axis, key in zip(axes, ("psnr", "psnr_w")):
            axis.plot(steps, [row[key] for row in rows], "o-", color=colour, markersize=3, label=run.name)
            baseline = baselines[key]
            if baseline is not None and (key, baseline) not in drawn_baselines:
                drawn_baselines.add((key, baseline))
                label = "blurred input" if shared_split else f"{run.name}: blurred input"
                axis.axhline(baseline, color="grey" if shared_split else colour, linestyle="--", linewidth=1, label=label)
    for axis, label in zip(axes, ("PSNR (dB)", "PSNR_w, blurred pixels (dB)")):
        axis.set_xlabel(args.xlabel)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(args.title)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
