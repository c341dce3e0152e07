"""The numbers of issue "NAFNet baseline and M2AENet", measured: prints one JSON object.

- ``params``: NAFNet and M2AENet parameter counts and their difference (paper: 17.11 M, +0.33 M);
- ``macs_256``: NAFNet's multiply-accumulates at 256x256 (paper: ~16 G);
- ``table3``: MACs at 2152x1436 of Table 3's four rows at a stated blur fraction (``--fraction``, a
  fixed mask of compact blobs), beside the paper's 0.764 / 0.995 / 0.528 / 0.759 T;
- ``break_even``: M2AENet's MACs over the blur fraction and the fraction where they equal NAFNet's
  (piecewise-linear between measured fractions);
- ``timing``: at 720x1280 with the same blur fraction, median seconds of NAFNet, M2AENet's pruned path
  and its dense masked path, the runs interleaved round by round so that load from other processes
  spreads over all three; ratios and the pruned/dense max abs difference.

Weights are random, with no parameter left identically zero (NAFNet's residual scales start at 0, which
would make every block the identity and the pruned/dense comparison trivial).

    PYTHONPATH=src python benchmarks/bench_m2aenet.py [--fraction 0.1] [--repeats 5] [--skip-table]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from adeblur.engine.profile import count_macs, force_blur_mask, make_blob_mask, randomise_zero_parameters_
from adeblur.models import build_model

PAPER_TABLE3_TERA_MACS = {"nafnet": 0.764, "m2aenet-no-mask": 0.995, "m2aenet-no-motion": 0.528, "m2aenet": 0.759}
TABLE3_SIZE = (2152, 1436)  # as the paper writes it; we read it as height x width of ReLoBlur frames
TIMING_SIZE = (720, 1280)
BREAK_EVEN_FRACTIONS = (0.02, 0.1, 0.5, 1.0)


def _model(name: str) -> torch.nn.Module:
    return randomise_zero_parameters_(build_model(name), seed=0).eval()


def _padded(model: torch.nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    multiple = int(getattr(model, "size_multiple", 1))
    return -(-size[0] // multiple) * multiple, -(-size[1] // multiple) * multiple


def _blob_mask(model: torch.nn.Module, size: tuple[int, int], fraction: float) -> torch.Tensor:
    height, width = _padded(model, size)
    mask = make_blob_mask(size[0], size[1], fraction, generator=torch.Generator().manual_seed(0))
    return F.pad(mask, (0, width - size[1], 0, height - size[0]))


def _macs(model: torch.nn.Module, size: tuple[int, int], fraction: float | None = None, *, meta: bool = False) -> int:
    height, width = _padded(model, size)
    if meta:  # shapes only (no data-dependent pruning in this model): fast and exact
        with torch.device("meta"):
            return count_macs(model.to("meta"), torch.empty(1, 3, height, width)).total
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    if fraction is None:
        return count_macs(model, image).total
    with force_blur_mask(model, _blob_mask(model, size, fraction)), torch.inference_mode():
        return count_macs(model, image).total


def _break_even(fractions: list[float], macs: list[int], target: int) -> float | None:
    points = list(zip(fractions, macs))
    for (f0, m0), (f1, m1) in zip(points, points[1:]):
        if (m0 - target) * (m1 - target) <= 0 and m1 != m0:
            return f0 + (target - m0) * (f1 - f0) / (m1 - m0)
    return None


def _timing(fraction: float, repeats: int, warmup: int) -> dict:
    nafnet, m2aenet = _model("nafnet"), _model("m2aenet")
    height, width = _padded(m2aenet, TIMING_SIZE)
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    mask = _blob_mask(m2aenet, TIMING_SIZE, fraction)

    def run_m2aenet(pruned: bool) -> torch.Tensor:
        m2aenet.pruned_inference = pruned
        return m2aenet(image)

    cases = {"nafnet": lambda: nafnet(image), "m2aenet_pruned": lambda: run_m2aenet(True),
             "m2aenet_dense": lambda: run_m2aenet(False)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    outputs = {}
    with force_blur_mask(m2aenet, mask), torch.inference_mode():
        for round_number in range(warmup + repeats):
            for name, run in cases.items():
                start = time.perf_counter()
                outputs[name] = run()
                elapsed = time.perf_counter() - start
                if round_number >= warmup:
                    times[name].append(elapsed)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {
        "size": list(TIMING_SIZE),
        "blur_fraction": fraction,
        "seconds": seconds,
        "seconds_all_runs": times,
        "pruned_over_dense": seconds["m2aenet_pruned"] / seconds["m2aenet_dense"],
        "m2aenet_pruned_over_nafnet": seconds["m2aenet_pruned"] / seconds["nafnet"],
        "m2aenet_dense_over_nafnet": seconds["m2aenet_dense"] / seconds["nafnet"],
        "max_abs_diff_pruned_vs_dense": float((outputs["m2aenet_pruned"] - outputs["m2aenet_dense"]).abs().max()),
        "repeats": repeats,
        "warmup": warmup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.1, help="blur fraction of the fixed mask")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-table", action="store_true", help="only params and timing (the table takes minutes)")
    args = parser.parse_args()
    started = time.perf_counter()
    report: dict = {"machine": {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                                "load_average_before": os.getloadavg(), "torch": torch.__version__}}

    nafnet_params = sum(p.numel() for p in build_model("nafnet").parameters())
    m2aenet_params = sum(p.numel() for p in build_model("m2aenet").parameters())
    report["params"] = {"nafnet": nafnet_params, "m2aenet": m2aenet_params,
                        "m2aenet_minus_nafnet": m2aenet_params - nafnet_params,
                        "paper": {"nafnet": 17.11e6, "m2aenet_minus_nafnet": 0.33e6}}
    report["macs_256"] = {"nafnet": _macs(_model("nafnet"), (256, 256), meta=True), "paper_nafnet": 16e9}

    if not args.skip_table:
        table = {
            "nafnet": _macs(_model("nafnet"), TABLE3_SIZE, meta=True),
            "m2aenet-no-mask": _macs(_model("m2aenet-no-mask"), TABLE3_SIZE, meta=True),
            "m2aenet-no-motion": _macs(_model("m2aenet-no-motion"), TABLE3_SIZE, args.fraction),
            "m2aenet": _macs(_model("m2aenet"), TABLE3_SIZE, args.fraction),
        }
        report["table3"] = {
            "size": list(TABLE3_SIZE),
            "blur_fraction": args.fraction,
            "tera_macs": {name: round(macs / 1e12, 4) for name, macs in table.items()},
            "paper_tera_macs": PAPER_TABLE3_TERA_MACS,
        }
        m2aenet = _model("m2aenet")
        curve = [_macs(m2aenet, TABLE3_SIZE, fraction) for fraction in BREAK_EVEN_FRACTIONS]
        report["break_even"] = {
            "fractions": list(BREAK_EVEN_FRACTIONS),
            "m2aenet_tera_macs": [round(m / 1e12, 4) for m in curve],
            "nafnet_tera_macs": round(table["nafnet"] / 1e12, 4),
            "break_even_fraction": _break_even(list(BREAK_EVEN_FRACTIONS), curve, table["nafnet"]),
        }

    report["timing"] = _timing(args.fraction, args.repeats, args.warmup)
    report["machine"]["load_average_after"] = os.getloadavg()
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
