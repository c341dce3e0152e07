"""Peak memory and time of one EfficientAttention forward (SAPHNet, Eq. 10) against the pixel count.

The attention is meant to cost O(HW * C * C2) in time and memory (it never forms the HW x HW matrix).
This measures one self-attention forward (inference, ``torch.no_grad``) at a fixed width (``--channels``
C, ``--clusters`` C2, batch 1, random weights) at several square sizes, with
:func:`adeblur.engine.profile.measure_peak_memory` (CPU: the process's peak resident memory above the
resident memory just before the call; CUDA: the allocator's peak, input and weights included), fits
peak bytes = a + b * pixels by least squares, and reports each size's relative deviation from the line
(target: within 10%) and what a quadratic (HW x HW) attention would need. Also the median seconds per
call. Prints JSON (to ``--json FILE`` too).

On CPU (glibc) the script first fixes malloc's mmap threshold at 128 KiB (``mallopt``; ``--glibc-default``
keeps glibc's default): every tensor buffer is then its own mapping, returned to the system when freed,
so the resident peak is the peak of live tensors. With glibc's default the threshold adapts up to 32 MiB:
freed temporaries below it stay resident in the heap until reused, which adds ~one freed intermediate to
the peak at small sizes but not at large ones (measured: 456 vs 392 bytes per pixel at C=32, C2=16),
i.e. it measures the allocator's retention more than the op.

    PYTHONPATH=src python benchmarks/bench_attention.py [--sizes 256 384 512 768 1024] [--device cpu]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import statistics
import time

import torch

from adeblur.engine.profile import measure_peak_memory, resolve_device, synchronize
from adeblur.io import write_text
from adeblur.ops import EfficientAttention


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of ys against xs."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y - slope * mean_x, slope


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 128 * 1024


def _fix_mmap_threshold(threshold: int) -> bool:
    """Fix glibc's mmap threshold (and stop its dynamic adjustment); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        return bool(name) and ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, threshold) == 1
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 384, 512, 768, 1024], help="square sides")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--gate-input", default="pooled", choices=["pooled", "descriptors"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per size (after one warm-up call)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--glibc-default", action="store_true", help="keep glibc's adaptive mmap threshold")
    parser.add_argument("--json", help="also write the JSON to this file ('-': standard output only)")
    args = parser.parse_args(argv)
    if len(args.sizes) < 3:
        parser.error("give at least 3 sizes for the line fit")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    threshold_fixed = device.type == "cpu" and not args.glibc_default and _fix_mmap_threshold(MMAP_THRESHOLD_BYTES)
    attention = EfficientAttention(args.channels, args.clusters, gate_input=args.gate_input).to(device).eval()
    generator = torch.Generator().manual_seed(0)

    runs = []
    load_before = os.getloadavg()
    for side in args.sizes:
        x = torch.rand(1, args.channels, side, side, generator=generator).to(device)

        def forward(x: torch.Tensor = x) -> None:
            with torch.no_grad():
                attention(x)

        forward()  # warm-up (kernels, allocator)
        peak, method = measure_peak_memory(forward, device)
        times = []
        for _ in range(args.repeats):
            synchronize(device)
            start = time.perf_counter()
            forward()
            synchronize(device)
            times.append(time.perf_counter() - start)
        runs.append(
            {
                "size": [side, side],
                "pixels": side * side,
                "peak_bytes": peak,
                "seconds": statistics.median(times),
                "seconds_all": times,
                "input_bytes": x.numel() * x.element_size(),
            }
        )
        del x, forward
    load_after = os.getloadavg()

    pixels = [float(run["pixels"]) for run in runs]
    peaks = [float(run["peak_bytes"]) for run in runs]
    intercept, slope = _fit_line(pixels, peaks)
    for run in runs:
        fitted = intercept + slope * run["pixels"]
        run["fitted_peak_bytes"] = round(fitted)
        run["relative_deviation"] = round((run["peak_bytes"] - fitted) / fitted, 4)
        run["bytes_per_pixel"] = round(run["peak_bytes"] / run["pixels"], 1)
        # the (HW x HW) float32 attention matrix of standard self-attention, for scale
        run["quadratic_attention_matrix_bytes"] = 4 * run["pixels"] ** 2
    max_deviation = max(abs(run["relative_deviation"]) for run in runs)
    report = {
        "op": "EfficientAttention forward, self-attention, batch 1, no_grad",
        "channels": args.channels,
        "clusters": args.clusters,
        "gate_input": args.gate_input,
        "device": str(device),
        "memory_method": method,
        "malloc_mmap_threshold_bytes": MMAP_THRESHOLD_BYTES if threshold_fixed else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        # the machine's load averages around the runs: other processes skew the times (not the memory)
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in load_after]},
        "fit": {
            "intercept_bytes": round(intercept),
            "bytes_per_pixel": round(slope, 2),
            "bytes_per_pixel_per_channel": round(slope / args.channels, 3),
            "max_relative_deviation": max_deviation,
            "within_10_percent": max_deviation <= 0.10,
        },
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json and args.json != "-":
        write_text(args.json, text + "\n", what="benchmark JSON")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
