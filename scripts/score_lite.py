"""Score restorers on a recipe's held-out validation images, local and global blur separately (JSON).

    python scripts/score_lite.py configs/m2aenet-lite.yaml \
        --model identity --model m2aenet-lite --model nafnet-lite=runs/ship/nafnet-lite/checkpoints/best.safetensors

The validation source of the config (for the shipped lite recipes: ../shared/data/sharp/set14, never
used in training) is blurred once with local (moving objects) and once with global (camera shake)
synthetic blur, each with its own fixed seed, and every ``--model`` (a registered name, which uses its
shipped weights, or ``name=weights``) is scored on the same pairs with the training engine's
``validate`` (outputs clamped to [0, 1]): PSNR, SSIM, and the blur-mask-weighted PSNR_w, SSIM_w.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from adeblur.engine.config import load_config
from adeblur.engine.data import build_source, collate_samples, validation_batches
from adeblur.engine.infer import load_model
from adeblur.engine.train import validate

KIND_SEEDS = {"local": 1001, "global": 1002}


def validation_pairs(config, kind: str, count: int, size: int) -> list[dict[str, torch.Tensor]]:
    source = dataclasses.replace(config.data.val, kind=kind)
    dataset = build_source(source, patch_size=size, crop="random", augment=False, seed=KIND_SEEDS[kind],
                           length=count, default_split="test")  # fmt: skip
    indices, _ = validation_batches(dataset, count)
    pairs = []
    for index in indices:
        sample = dataset[index]
        pair = {key: value for key, value in collate_samples([sample]).items() if key in ("blur", "sharp", "mask")}
        pair["has_mask"] = torch.tensor(kind == "local")  # global blur covers every pixel: PSNR_w = PSNR
        pairs.append(pair)
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a training config; its data.val source is scored")
    parser.add_argument("--model", action="append", required=True, help="NAME or NAME=WEIGHTS (repeatable)")
    parser.add_argument("--count", type=int, default=64, help="pairs per blur kind")
    parser.add_argument("--size", type=int, default=256, help="pair size (pixels, square)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    pairs = {kind: validation_pairs(config, kind, args.count, args.size) for kind in KIND_SEEDS}
    report: dict[str, object] = {"config": args.config, "count": args.count, "size": args.size, "scores": {}}
    for entry in args.model:
        name, _, weights = entry.partition("=")
        model = load_model(name, weights or None, device="cpu")
        scores = {}
        for kind, samples in pairs.items():
            started = time.perf_counter()
            with torch.no_grad():
                scores[kind] = validate(model, samples, list(range(len(samples))), len(samples), torch.device("cpu"))
            scores[kind]["seconds"] = time.perf_counter() - started
        report["scores"][entry] = scores  # type: ignore[index]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
