"""Tiling quality and large-image cost of `adeblur deblur`; prints JSON.

1. Tiles vs whole image: a 1024 x 1024 synthetic local-blur image (dead leaves, ``adeblur synth``'s
   generator) restored whole and in 512-px tiles with 64-px overlap: PSNR(tiled, whole) and the seam
   ratio (mean |tiled - whole| within 8 px of tile borders / elsewhere), for each TLC setting: off
   (whole-image statistics), the default (1.5 x the training patch recorded in the weights), 384 px,
   and 384 px with windows clipped at borders instead of shifted inside; plus each one's PSNR against
   the sharp image.
2. ``adeblur deblur`` of a 4096 x 3072 PNG (the same image upscaled) in a fresh process with the default
   settings: wall time, peak resident memory of that process (``ru_maxrss`` of the child), and the tiles
   the automatic choice makes.

Usage: python benchmarks/bench_tiling.py --weights CHECKPOINT [--skip-large] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adeblur.data.generate import write_synthetic_dataset
from adeblur.engine.infer import (
    DEFAULT_OVERLAP,
    _automatic_tile,
    _probe_side,
    estimate_bytes_per_pixel,
    load_model,
    restore,
    seam_ratio,
    set_pool_window,
    tile_starts,
)
from adeblur.io import read_image, write_image
from adeblur.metrics import psnr


def tiles_versus_whole(weights: str, image: torch.Tensor, sharp: torch.Tensor, tile: int, overlap: int) -> list[dict]:
    rows = []
    settings = [("off", None, "shift"), ("default", "auto", "shift"), ("384", 384, "shift"), ("384-clip", 384, "clip")]
    for label, window, border in settings:
        model = load_model(weights=weights, device="cpu", pool_window=window)
        if border != "shift":
            set_pool_window(model, window, border=border)
        windows = sorted({getattr(m, "pool_window", None) for m in model.modules() if hasattr(m, "pool_window")}, key=str)
        start = time.perf_counter()
        whole = restore(model, image, memory_budget=2**40)
        whole_seconds = time.perf_counter() - start
        start = time.perf_counter()
        tiled = restore(model, image, tile=tile, overlap=overlap)
        tiled_seconds = time.perf_counter() - start
        rows.append({
            "tlc": label,
            "border": border,
            "module_windows": windows,
            "psnr_tiled_vs_whole": round(psnr(tiled, whole).item(), 3),
            "max_abs_diff": round((tiled - whole).abs().max().item(), 5),
            "seam_ratio": round(seam_ratio(tiled, whole, tile=tile, overlap=overlap, size_multiple=model.size_multiple), 4),
            "psnr_input_vs_sharp": round(psnr(image, sharp).item(), 3),
            "psnr_whole_vs_sharp": round(psnr(whole, sharp).item(), 3),
            "psnr_tiled_vs_sharp": round(psnr(tiled, sharp).item(), 3),
            "seconds_whole": round(whole_seconds, 2),
            "seconds_tiled": round(tiled_seconds, 2),
        })  # fmt: skip
    return rows


def large_image_run(weights: str, image: torch.Tensor, folder: Path, size: tuple[int, int]) -> dict:
    big = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    source = write_image(folder / "large.png", big)
    model = load_model(weights=weights, device="cpu")
    padded = torch.empty(1, 3, *size)
    tile = _automatic_tile(model, padded, None, None, torch.device("cpu"))
    tiles = None if tile is None else len(tile_starts(size[0], tile, DEFAULT_OVERLAP)) * len(tile_starts(size[1], tile, DEFAULT_OVERLAP))
    command = [sys.executable, "-m", "adeblur", "deblur", str(source), "--weights", weights, "-o", str(folder / "out")]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: kilobytes
    return {
        "size": f"{size[1]}x{size[0]}",
        "exit_code": completed.returncode,
        "stderr_tail": completed.stderr[-300:],
        "wall_seconds": round(seconds, 1),
        "peak_rss_bytes": peak,
        "peak_rss_gib": round(peak / 2**30, 3),
        "bytes_per_pixel_estimate": round(estimate_bytes_per_pixel(model)),
        "probe_side": _probe_side(model),
        "automatic_tile": tile,
        "tiles": tiles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="m2aenet-lite checkpoint or weights file")
    parser.add_argument("--size", type=int, default=1024, help="side of the tiling test image")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--skip-large", action="store_true", help="skip the 4096 x 3072 run")
    parser.add_argument("--threads", type=int, help="torch threads in this process (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        list(write_synthetic_dataset(folder / "data", kind="local", count=1, seed=0, size=(args.size, args.size)))
        (blur_path,) = sorted((folder / "data" / "blur").iterdir())
        image, _ = read_image(blur_path)
        sharp, _ = read_image(folder / "data" / "sharp" / blur_path.name)
        report = {
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__,
            "weights": args.weights,
            "image": f"synthetic local blur (dead leaves), {args.size}x{args.size}",
            "tile": args.tile,
            "overlap": args.overlap,
            "tiles_vs_whole": tiles_versus_whole(args.weights, image, sharp, args.tile, args.overlap),
        }
        if not args.skip_large:
            report["large_image"] = large_image_run(args.weights, image, folder, (3072, 4096))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
