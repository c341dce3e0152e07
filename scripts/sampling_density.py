"""Sampling density inside vs outside the ground-truth blur mask on a recipe's validation split (JSON).

    python scripts/sampling_density.py configs/saphnet-as-lite.yaml \
        --weights runs/saphnet-as-lite/checkpoints/best.safetensors

The validation set is built exactly as ``adeblur train`` builds it (:func:`adeblur.engine.train.validation_set`:
``data.val``, ``data.val_count`` crops of ``data.val_size``, seed stream ``seed + 19``); ``--set`` overrides
the config as on the command line (e.g. ``--set data.val_count=64``). The model (eval mode: top-K, or
``--policy``) restores each sample once; for every sampled stage the processed pixels of the selection
grid are compared with the blur mask area-averaged to that grid (``adeblur.losses.sampling_density_counts``).

Reported per stage and for both stages together, pooled over the samples whose mask is partial (neither
empty nor full: camera-shake samples, whose mask is all ones, say nothing about where pixels go):

* ``density_ratio``: (share of the processed pixels inside the mask) / (share of the area it covers),
  the ``density_ratio`` column of train.csv; 1 = uniform;
* ``inside_outside_ratio``: (processed pixels per blurred cell) / (processed pixels per sharp cell);
* ``density_inside``, ``density_outside``: processed pixels per selection-grid cell inside / outside
  (0.25 everywhere for the uniform lattice at budget 1);
* the same under ``policy_only``, counting the policy's choices only (without the fixed anchors).

``--selections`` adds ``psnr_by_selection``: the validation PSNR and mask-weighted PSNR_w of the final
output (clamped, as ``adeblur train`` scores) when the sampled stages take, at the same K,

* ``policy``: the model's own top-K (eval mode);
* ``uniform``: the regular lattice;
* ``random``: an exactly-K draw with equal probabilities (``--seed``);
* ``oracle``: the top-K of the ground-truth blur mask (ties broken at random): the most blurred cells;
* ``anti_oracle``: the top-K of 1 - mask: the sharpest cells.

``oracle - anti_oracle`` measures how much the location of the processed pixels matters on this
checkpoint: near 0 dB, where the sampled stages look hardly changes the output, and REINFORCE has little
reward to learn from; below 0, concentrating on the blur hurts (compare ``uniform`` and ``random``: a
network trained on spread-out layouts can lose on any concentrated one). A ``sampling="uniform"`` model
ignores scores and policy: all its rows are the lattice.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from adeblur.engine.config import load_config
from adeblur.engine.infer import load_model
from adeblur.engine.train import validation_set
from adeblur.losses import density_ratios, sampling_density_counts
from adeblur.metrics import psnr, weighted_psnr

KEYS = ("points_inside", "points_outside", "area_inside", "area_outside")
SELECTIONS = ("policy", "uniform", "random", "oracle", "anti_oracle")


def summary(counts: dict[str, torch.Tensor]) -> dict[str, float | int | None]:
    """Pooled ratios and densities of per-sample counts ((N,) tensors), over the partially blurred samples."""
    partial = (counts["area_inside"] > 1e-6) & (counts["area_outside"] > 1e-6)
    pooled = {key: float(counts[key][partial].sum()) for key in KEYS}
    ratios = density_ratios(counts)

    def number(value: float) -> float | None:
        return value if math.isfinite(value) else None  # JSON has no infinity (no pixel outside)

    return {
        "samples": int(partial.sum()),
        "density_ratio": number(float(ratios["density_ratio"])) if ratios else None,
        "inside_outside_ratio": number(float(ratios["inside_outside_ratio"])) if ratios else None,
        "density_inside": pooled["points_inside"] / pooled["area_inside"] if pooled["area_inside"] else None,
        "density_outside": pooled["points_outside"] / pooled["area_outside"] if pooled["area_outside"] else None,
    }


def psnr_by_selection(model, samples, device, *, seed: int = 0) -> dict[str, dict[str, float | None]]:
    """Mean PSNR / PSNR_w of the final output per choice of pixels (see the module docstring), same K."""
    generator = torch.Generator(device).manual_seed(seed)
    scores: dict[str, dict[str, list[float]]] = {name: {"psnr": [], "psnr_w": []} for name in SELECTIONS}
    with torch.no_grad():
        for sample in samples:
            blur, sharp, mask = (sample[key].to(device) for key in ("blur", "sharp", "mask"))
            jitter = 1e-3 * torch.rand(mask.shape, generator=generator, device=device)  # random order among ties
            runs = {
                "policy": {},
                "uniform": {"policy": "uniform"},
                "random": {"policy": "sample", "generator": generator, "selection_scores": torch.zeros_like(mask)},
                "oracle": {"policy": "top-k", "selection_scores": mask + jitter},
                "anti_oracle": {"policy": "top-k", "selection_scores": 1 - mask + jitter},
            }  # fmt: skip
            for name, options in runs.items():
                restored = model(blur, **options).float().clamp(0, 1)
                scores[name]["psnr"].append(float(psnr(restored, sharp)))
                if bool(sample["has_mask"]) and float(mask.sum()) > 0:
                    scores[name]["psnr_w"].append(float(weighted_psnr(restored, sharp, mask)))
    result = {
        name: {key: sum(values) / len(values) if values else None for key, values in entry.items()}
        for name, entry in scores.items()
    }
    result["oracle_minus_anti_oracle"] = {
        key: None if result["oracle"][key] is None else result["oracle"][key] - result["anti_oracle"][key]
        for key in ("psnr", "psnr_w")
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a training config; its validation split is measured")
    parser.add_argument("--weights", help="checkpoint or weights file (default: the model's shipped weights)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, as adeblur train --set (repeatable)")  # fmt: skip
    parser.add_argument("--policy", choices=("top-k", "uniform", "sample"), default=None,
                        help="selection (default: the model's eval-mode choice, top-K)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of --policy sample")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--selections", action="store_true",
                        help="also score the output under policy / uniform / random / oracle / anti-oracle choices")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    model = load_model(config.model.name, args.weights, device=args.device)
    device = next(model.parameters()).device
    samples, _, total = validation_set(config)
    per_stage: dict[str, dict[str, list[torch.Tensor]]] = {}
    generator = torch.Generator(device).manual_seed(args.seed) if args.policy == "sample" else None
    with torch.no_grad():
        for sample in samples:
            blur, mask = sample["blur"].to(device), sample["mask"].to(device)
            _, aux = model(blur, return_aux=True, policy=args.policy, generator=generator)
            for stage, pixel_index in enumerate(aux["pixel_index"], start=2):
                for name, skip in ((f"stage{stage}", 0), (f"stage{stage}/policy_only", aux["num_anchors"])):
                    counts = sampling_density_counts(
                        pixel_index, mask, selection_size=aux["selection_size"],
                        selection_scale=aux["selection_scale"], skip=skip,
                    )  # fmt: skip
                    for key in KEYS:
                        per_stage.setdefault(name, {}).setdefault(key, []).append(counts[key].cpu())
    stacked = {name: {key: torch.cat(values) for key, values in counts.items()} for name, counts in per_stage.items()}
    report: dict[str, object] = {
        "config": args.config, "weights": args.weights, "model": config.model.name,
        "policy": args.policy or "eval default", "count": total,
    }  # fmt: skip
    for scope in ("", "/policy_only"):
        names = [name for name in stacked if name.endswith(scope) and (scope or "/" not in name)]
        both = {key: sum(stacked[name][key] for name in names) for key in KEYS}
        block = {"all_stages": summary(both), **{name.split("/")[0]: summary(stacked[name]) for name in names}}
        report["policy_only" if scope else "processed"] = block
    if args.selections:
        report["psnr_by_selection"] = psnr_by_selection(model, samples, device, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
