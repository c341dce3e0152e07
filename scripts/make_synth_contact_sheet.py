"""Make docs/synth-contact-sheet.png: what `adeblur synth` writes, for both kinds of blur.

Sources are scikit-image's bundled sample photos (installed with the test extras) and dead leaves, never
../shared/data. Each row: sharp | blurred | blur mask (local) or kernel (global, enlarged).

    python scripts/make_synth_contact_sheet.py [--out docs/synth-contact-sheet.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import data as sample_photos

from adeblur.data import write_synthetic_dataset

TILE = 192
GAP = 6
LABEL_HEIGHT = 18


def _tile(path: Path, nearest: bool = False) -> Image.Image:
    image = Image.open(path).convert("RGB")
    if nearest:  # a kernel: crop to its support, then enlarge without smoothing
        box = image.getbbox() or (0, 0, image.width, image.height)
        side = max(box[2] - box[0], box[3] - box[1]) + 4
        cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        image = image.crop((cx - side // 2, cy - side // 2, cx + side - side // 2, cy + side - side // 2))
        return image.resize((TILE, TILE), Image.NEAREST)
    return image.resize((TILE, TILE), Image.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/synth-contact-sheet.png")
    args = parser.parse_args()

    rows: list[tuple[str, list[Image.Image]]] = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        photos = work / "photos"
        photos.mkdir()
        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            Image.fromarray(np.asarray(getattr(sample_photos, name)())).save(photos / f"{name}.png")
        jobs = [
            ("local", photos, 2, (320, 320)),
            ("local", None, 1, (256, 256)),
            ("global", photos, 2, (320, 320)),
            ("global", None, 1, (256, 256)),
        ]
        for number, (kind, source, count, size) in enumerate(jobs):
            out = work / f"set{number}"
            names = list(write_synthetic_dataset(out, kind=kind, count=count, seed=number, sharp_dir=source, size=size))
            extra = "mask" if kind == "local" else "kernel"
            for name in names:
                tiles = [_tile(out / "sharp" / f"{name}.png"), _tile(out / "blur" / f"{name}.png"),
                         _tile(out / extra / f"{name}.png", nearest=kind == "global")]
                rows.append((f"{kind}: {name}", tiles))

    columns = ("sharp (mid-exposure)", "blurred", "blur mask / kernel")
    width = 3 * TILE + 4 * GAP
    height = LABEL_HEIGHT + len(rows) * (TILE + LABEL_HEIGHT + GAP) + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(columns):
        draw.text((GAP + c * (TILE + GAP) + 4, 3), title, fill="black")
    y = LABEL_HEIGHT
    for label, tiles in rows:
        draw.text((GAP + 4, y + 3), label, fill=(60, 60, 60))
        y += LABEL_HEIGHT
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (GAP + c * (TILE + GAP), y))
        y += TILE + GAP
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)


if __name__ == "__main__":
    main()
