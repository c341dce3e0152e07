"""Cross-generator validation: score restorers on blur that no training recipe of ours generates (JSON).

    python scripts/cross_generator.py --model identity --model m2aenet-lite \
        --model v2=runs/m2aenet-lite-v2/checkpoints/best.safetensors --threads 1

What decides whether new weights ship (issue 15): the gain over the blurred input on sets held out by
*generator*, not only by image. Every set uses content that no recipe trains on (Set14 by default) and:

- ``local-layered``: moving objects made by :func:`adeblur.data.synth.synthesize_layered_blur` (the
  layered PSF model, a different renderer from the training one's quadratic sub-frame paths), whose
  paths are the measured camera-shake PSFs of ``--kernels`` enlarged 1-2.5x (13-65 px); scored by PSNR_w
  over the blur mask, and PSNR;
- ``global-measured``: camera shake by the measured PSFs themselves (a kernel family never trained on:
  Levin et al. 2009's eight and the twelve of kernels_12.mat by default), random camera gamma 1.8-2.6,
  Gaussian noise up to 0.01, half the images JPEG-compressed (q 60-95); scored by PSNR;
- ``levin-real``: Levin et al.'s 32 real captures (``--levin``, the paired layout), when the folder is
  there; whole-image PSNR and SSIM as ``adeblur evaluate``.

Pairs are fixed by seeds, so runs compare. ``--model`` takes a registered name (its shipped weights) or
``label=weights`` (a checkpoint of that model; the model is read from the checkpoint). ``--kernels``
takes kernel files or folders of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from adeblur.data.synth import synthesize_global_blur, synthesize_layered_blur
from adeblur.data.synthetic import SyntheticBlurDataset
from adeblur.engine.infer import load_model
from adeblur.engine.train import validate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CONTENT = SHARED / "sharp" / "set14"
DEFAULT_KERNELS = [SHARED / "kernels" / "Levin09.mat", SHARED / "kernels" / "kernels_12.mat"]
DEFAULT_LEVIN = SHARED / "real" / "levin2009"
SEEDS = {"local-layered": 2001, "global-measured": 2002}


def held_out_pairs(content, kernels, count: int, size: int) -> dict[str, list[dict[str, torch.Tensor]]]:
    """The two synthetic held-out sets: ``{name: [ {blur, sharp, mask, has_mask} (1, C, H, W) ... ]}``."""
    sets = {}
    for name, seed in SEEDS.items():
        crops = SyntheticBlurDataset(content, kind="global", patch_size=size, length=2 * count, seed=seed, blur=False)
        sharp = torch.stack([crops[i]["sharp"] for i in range(count)])
        objects = torch.stack([crops[count + i]["sharp"] for i in range(count)])
        generator = torch.Generator().manual_seed(seed)
        if name == "local-layered":
            out = synthesize_layered_blur(sharp, generator=generator, kernels=kernels, object_source=objects,
                                          gamma=(1.8, 2.6))  # fmt: skip
        else:
            out = synthesize_global_blur(sharp, generator=generator, kernels=kernels, gamma=(1.8, 2.6),
                                         noise_sigma=(0.0, 0.01), jpeg_quality=(60, 95), jpeg_probability=0.5)  # fmt: skip
            out["mask"] = torch.ones_like(out["blur"][:, :1])
        has_mask = torch.tensor(name == "local-layered")
        sets[name] = [
            {"blur": out["blur"][i : i + 1], "sharp": out["sharp"][i : i + 1], "mask": out["mask"][i : i + 1],
             "has_mask": has_mask}  # fmt: skip
            for i in range(count)
        ]
    return sets


def score(models: list[str], content, kernels, levin: Path | None, count: int, size: int, device: str = "cpu") -> dict:
    """Scores of every model on every set, with the blurred input's and each model's gain over it."""
    pairs = held_out_pairs(content, kernels, count, size)
    report: dict = {"count": count, "size": size, "content": str(content), "kernels": [str(k) for k in kernels],
                    "sets": {}}  # fmt: skip
    for set_name, samples in pairs.items():
        report["sets"][set_name] = {"input": None, "models": {}}
    if levin is not None:
        report["sets"]["levin-real"] = {"input": None, "models": {}}
    for entry in models:
        label, _, weights = entry.partition("=")
        name = label if not weights else None
        model = load_model(name, weights or None, device=device)
        where = next((p.device for p in model.parameters()), torch.device("cpu"))
        for set_name, samples in pairs.items():
            started = time.perf_counter()
            with torch.no_grad():
                result = validate(model, samples, list(range(len(samples))), len(samples), where,
                                  include_input=True)  # fmt: skip
            inputs = {k.removeprefix("input_"): v for k, v in result.items() if k.startswith("input_")}
            scores = {k: v for k, v in result.items() if not k.startswith("input_")}
            scores["seconds"] = time.perf_counter() - started
            report["sets"][set_name]["input"] = inputs
            scores["gain"] = {k: (v - inputs[k]) if v is not None and inputs.get(k) is not None else None
                              for k, v in scores.items() if k in inputs}  # fmt: skip
            report["sets"][set_name]["models"][label] = scores
        if levin is not None:
            from adeblur.engine.evaluate import evaluate_folder

            result = evaluate_folder(levin, "paired", model=model, device=str(where))["summary"]
            inputs = {"psnr": result["input_psnr"], "ssim": result["input_ssim"]}
            report["sets"]["levin-real"]["input"] = inputs
            report["sets"]["levin-real"]["models"][label] = {
                "psnr": result["psnr"], "ssim": result["ssim"],
                "gain": {k: result[k] - inputs[k] for k in inputs},
            }  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME or LABEL=WEIGHTS (repeatable)")
    parser.add_argument("--content", type=Path, default=DEFAULT_CONTENT, help="held-out sharp photos")
    parser.add_argument("--kernels", type=Path, action="append", help="measured kernel files (repeatable)")
    parser.add_argument("--levin", type=Path, default=DEFAULT_LEVIN, help="Levin 2009 captures (paired layout)")
    parser.add_argument("--count", type=int, default=64, help="pairs per synthetic set")
    parser.add_argument("--size", type=int, default=256, help="pair size (pixels, square)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels = args.kernels or DEFAULT_KERNELS
    for path in [args.content, *kernels]:
        if not path.exists():
            print(f"cross_generator: {path} does not exist", file=sys.stderr)
            return 1
    levin = args.levin if args.levin.is_dir() else None
    report = score(args.model, args.content, kernels, levin, args.count, args.size, args.device)
    text = json.dumps(report, indent=2)
    if args.json:
        from adeblur.io import write_text

        write_text(args.json, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
