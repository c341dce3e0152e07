"""Make docs/gallery.png with the tool itself: input / output / blur mask / motion, one row per photo.

The photos are scikit-image's bundled samples (every user of the test extra has them), blurred by the
project's own local-motion synthesiser; then ``adeblur deblur --save-mask --save-motion`` restores them,
exactly as a user would run it, and the written files are laid out side by side.

    python scripts/make_gallery.py --weights runs/m2aenet-lite/checkpoints/best.safetensors

Without ``--weights`` the shipped default model is used (when the package has one).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from skimage import data as samples

from adeblur.cli import main as adeblur
from adeblur.data.synth import synthesize_local_blur
from adeblur.io import read_image, write_image
from adeblur.viz import side_by_side

PHOTOS = ("astronaut", "coffee", "chelsea")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights or checkpoint of the model to show")
    parser.add_argument("--model", help="registered model name (default: the one in the weights)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "gallery.png"))
    parser.add_argument("--size", type=int, default=256, help="photos are resized to this height")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in PHOTOS:
            photo = torch.from_numpy(getattr(samples, name)()).permute(2, 0, 1).float()[None] / 255
            width = round(photo.shape[-1] * args.size / photo.shape[-2] / 16) * 16
            photo = torch.nn.functional.interpolate(photo, size=(args.size, width), mode="area")
            blurred = synthesize_local_blur(photo, generator=generator)["blur"][0]
            write_image(folder / f"{name}.png", blurred)
        command = ["deblur", *(str(folder / f"{n}.png") for n in PHOTOS), "-o", str(folder / "out"),
                   "--save-mask", "--save-motion", "--device", "cpu"]  # fmt: skip
        if args.weights:
            command += ["--weights", args.weights]
        if args.model:
            command += ["--model", args.model]
        if adeblur(command) != 0:
            return 1
        for name in PHOTOS:
            images = [read_image(folder / f"{name}.png")[0]] + [
                read_image(folder / "out" / f"{name}_{suffix}.png")[0] for suffix in ("deblurred", "mask", "motion")
            ]
            labels = ["input (synthetic local blur)", "adeblur deblur", "predicted blur mask", "predicted motion"]
            rows.append(side_by_side(images, labels if not rows else None))
        width = max(row.shape[-1] for row in rows)
        sheet = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows], dim=1)
        write_image(args.out, sheet)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
