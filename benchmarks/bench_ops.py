"""Time adeblur's custom ops against a plain 3x3 depthwise convolution measured in the same run.

Prints JSON: every case's median wall-clock seconds over ``--repeats`` runs (after ``--warmup``
runs; the cases are interleaved so that load from other processes spreads over all of them) and
its ratio to the reference, ``F.conv2d`` 3x3 depthwise on the same (1, C, H, W) NCHW tensor, plus
the ratio of the fastest runs and the machine's load average (a shared machine skews timings).

    PYTHONPATH=src python benchmarks/bench_ops.py [--size 360x640] [--channels 64] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from adeblur.engine.profile import make_blob_mask
from adeblur.ops import (
    MaskAwareConv,
    build_sampling_plan,
    deform_conv2d,
    deform_conv2d_macs,
    deform_conv2d_planned,
    forward_warp,
    mask_aware_conv_macs,
    mask_to_pixel_index,
    motion_aware_offsets,
    quadratic_trajectory,
)

FRACTIONS = (0.01, 0.1, 0.5)


def naive_deform_conv(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The baseline of DESIGN.md: one grid_sample per tap of a 3x3 depthwise deformable conv."""
    _, channels, height, width = x.shape
    ys = torch.arange(height, dtype=x.dtype).view(height, 1)
    xs = torch.arange(width, dtype=x.dtype).view(1, width)
    out = torch.zeros_like(x)
    for k in range(9):
        py = ys + (k // 3 - 1) + offset[:, 2 * k]
        px = xs + (k % 3 - 1) + offset[:, 2 * k + 1]
        grid = torch.stack((px / (width - 1) * 2 - 1, py / (height - 1) * 2 - 1), -1)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out += sampled * weight[:, 0, k // 3, k % 3].view(1, channels, 1, 1)
    return out


def fused_depthwise_deform(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, tap_weight: torch.Tensor):
    """One gather-multiply-sum over a plan's (Q, K, 4) corners, written for torch.compile to fuse.

    Eager PyTorch would materialise (Q, K, 4, C); only the compiled version is timed (``--compile``).
    """
    gathered = table[index]  # (Q, K, 4, C)
    return (gathered * weight[..., None]).sum(2).mul(tap_weight).sum(1)


def measure(cases: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Wall-clock seconds of every run of every case (cases interleaved, after the warm-up runs)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        for _ in range(warmup):
            for run in cases.values():
                run()
        for _ in range(repeats):
            for name, run in cases.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="360x640", help="HxW of the feature maps")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile of a fused gather (compiles for minutes)"
    )
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    channels = args.channels
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)

    x = torch.rand(1, channels, height, width, generator=g)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, 3, 3, generator=g) * 0.3
    start, end = torch.randn(2, 1, 2, height, width, generator=g) * 2
    offset = motion_aware_offsets(quadratic_trajectory(start, end, 9))
    plan = build_sampling_plan(offset, (height, width), 3, padding=1)
    masks = {f: make_blob_mask(height, width, f, generator=args.seed + i) for i, f in enumerate(FRACTIONS)}
    pixels = {f: mask_to_pixel_index(m) for f, m in masks.items()}
    subset_plans = {f: build_sampling_plan(offset, (height, width), 3, padding=1, pixel_index=p)
                    for f, p in pixels.items()}  # fmt: skip
    mask_aware = MaskAwareConv(channels).eval()
    image = torch.rand(1, 3, height, width, generator=g)
    flow = start  # (1, 2, H, W), a few pixels

    pct = {f: f"{round(f * 100)}pct" for f in FRACTIONS}
    cases: dict[str, Callable[[], object]] = {
        "depthwise_conv3x3": lambda: F.conv2d(x, weight, padding=1, groups=channels),
        "depthwise_conv3x3_channels_last": lambda: F.conv2d(x_cl, weight, padding=1, groups=channels),
        "dcn_naive_grid_sample_per_tap": lambda: naive_deform_conv(x, offset, weight),
        "deform_conv2d": lambda: deform_conv2d(x, offset, weight, padding=1, backend="torch"),
        "deform_conv2d_channels_last": lambda: deform_conv2d(x_cl, offset, weight, padding=1, backend="torch"),
        "build_sampling_plan": lambda: build_sampling_plan(offset, (height, width), 3, padding=1),
        "deform_conv2d_planned": lambda: deform_conv2d_planned(x, plan, weight),
        "deform_conv2d_planned_channels_last": lambda: deform_conv2d_planned(x_cl, plan, weight),
    }
    for f in FRACTIONS:
        cases[f"build_sampling_plan_subset_{pct[f]}"] = lambda f=f: build_sampling_plan(
            offset, (height, width), 3, padding=1, pixel_index=pixels[f]
        )
        cases[f"deform_conv2d_planned_subset_{pct[f]}_channels_last"] = lambda f=f: deform_conv2d_planned(
            x_cl, subset_plans[f], weight
        )
    cases["mask_aware_conv_dense"] = lambda: mask_aware(x, masks[0.1], pruned=False)
    for f in FRACTIONS:
        cases[f"mask_aware_conv_pruned_{pct[f]}"] = lambda f=f: mask_aware(x, masks[f], pruned=True)
        cases[f"mask_aware_conv_pruned_{pct[f]}_channels_last"] = lambda f=f: mask_aware(x_cl, masks[f], pruned=True)
    cases["forward_warp_average_rgb"] = lambda: forward_warp(image, flow)
    cases["quadratic_trajectory_9_and_offsets"] = lambda: motion_aware_offsets(quadratic_trajectory(start, end, 9))
    if args.compile:
        compiled = torch.compile(fused_depthwise_deform, dynamic=False)
        table = x_cl.permute(0, 2, 3, 1).reshape(-1, channels)
        index, corner_weight = plan.index[0].long(), plan.weight[0]
        tap_weight = weight.view(channels, 9).t().contiguous()
        began = time.perf_counter()
        with torch.no_grad():
            compiled(table, index, corner_weight, tap_weight)
        compile_seconds = time.perf_counter() - began
        cases["fused_gather_torch_compile_channels_last"] = lambda: compiled(table, index, corner_weight, tap_weight)

    load_before = os.getloadavg()[0]
    times = measure(cases, args.repeats, args.warmup)
    load_after = os.getloadavg()[0]
    seconds = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}
    reference = seconds["depthwise_conv3x3"]
    macs = {
        "depthwise_conv3x3": height * width * channels * 9,
        "deform_conv2d": deform_conv2d_macs(channels, channels, 3, height * width, groups=channels),
        "mask_aware_conv_dense": mask_aware_conv_macs(masks[0.1], channels, pruned=False),
    }
    for f in FRACTIONS:
        macs[f"deform_conv2d_planned_subset_{pct[f]}"] = deform_conv2d_macs(
            channels, channels, 3, pixels[f].numel(), groups=channels
        )
        macs[f"mask_aware_conv_pruned_{pct[f]}"] = mask_aware_conv_macs(masks[f], channels)
    report = {
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": [height, width],
        "channels": channels,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "reference": {"case": "depthwise_conv3x3", "op": "F.conv2d 3x3 depthwise, NCHW", "seconds": reference},
        "mask_fractions": {pct[f]: round(masks[f].mean().item(), 4) for f in FRACTIONS},
        "dilated_mask_fractions": {
            pct[f]: round(F.max_pool2d(masks[f], 3, 1, 1).mean().item(), 4) for f in FRACTIONS
        },
        "plan_bytes": {"full": plan.nbytes, **{pct[f]: subset_plans[f].nbytes for f in FRACTIONS}},
        # the machine's 1-minute load average around the timed runs: other processes skew the times
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "ratio_to_reference": {name: round(value / reference, 3) for name, value in seconds.items()},
        "seconds": {name: round(value, 5) for name, value in seconds.items()},
        # fastest run / fastest reference run: less sensitive to the load of a shared machine
        "ratio_to_reference_fastest": {
            name: round(value / fastest["depthwise_conv3x3"], 3) for name, value in fastest.items()
        },
        "macs": macs,
    }
    if args.compile:
        report["compile_seconds"] = round(compile_seconds, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
