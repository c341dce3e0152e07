"""SAPHNet's PDF direction check (CVPR 2020 Sec. 4.4): do the learned offsets follow a line blur? Prints JSON.

The paper blurred 25 sharp images with linear PSFs at 0, 45, 90 and 135 degrees and recorded "the
dominant direction of filter offsets estimated by our PDF module": 11, 50, 81 and 126 degrees. This
script repeats it for a trained ``saphnet*`` model (``--weights``: a weights file or training checkpoint;
``--model``: the registered name, default the one the weights record):

1. Images: ``--count`` (25) crops of ``--size`` x ``--size`` pixels (256; rounded down to the model's
   ``size_multiple`` so that no padding enters the maps), from scikit-image's bundled sample photos
   (:data:`SAMPLE_PHOTOS`) or from the images of ``--images DIR``, taken round-robin over the photos, each
   photo's crops on a regular grid ordered from its centre outwards; grey photos become RGB.
2. Blur: each crop convolved (:func:`adeblur.data.synth.blur_with_kernels`, reflected borders) with
   :func:`adeblur.data.synth.linear_kernels` of ``--length`` (15) pixels at each of ``--angles``.
3. One forward pass per blurred image (batch 1) with a forward hook on every
   :class:`~adeblur.ops.PixelDependentFilter`: each call's offsets (B, 2*K*K, h, w) become per-pixel
   axes, :func:`~adeblur.ops.dominant_offset_direction` ``(mode="axis")``, and angles,
   :func:`~adeblur.ops.direction_to_degrees` ``(axial=True)``.
4. Averages of axial data use doubled angles (an axis at 179 degrees is next to one at 1, and their
   mean is 0, not 90): a module's direction for one image is half the angle of
   ``sum_pixels w (cos 2a, sin 2a)`` with ``w`` = the squared length of the pixel's axis, ``l1 - l2``
   (the eigenvalue gap of the offsets' second moments: 0 where they spread isotropically). That is
   exactly the principal axis of the second moments summed over the pixels. The direction for one PSF
   angle is the doubled-angle mean of the images' directions (one vote each); its ``resultant_length``
   R in [0, 1] says how well they agree (1: all equal; 0: no common axis).

Angles (PSF and estimate alike) are in degrees counter-clockwise from rightwards **as the image is
displayed** (0 = horizontal, 90 = vertical, 45 = bottom-left to top-right), folded into [0, 180): the
convention of both ``linear_kernels`` and ``direction_to_degrees`` (a test checks that the offsets
along a ``linear_kernels`` line give its angle).

Module: the headline result is that of ``--module`` (default: the first PDF module of the top level's
encoder, the one ``adeblur deblur --save-maps`` shows: 1/4 resolution for ``saphnet``); ``modules`` has
the same summary for every PDF module (one forward pass serves them all). The paper does not say
which module it read.

    PYTHONPATH=src python benchmarks/bench_pdf_direction.py --weights W [--model saphnet] [--images DIR]
        [--count 25] [--size 256] [--length 15] [--device auto] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from adeblur.data.synth import blur_with_kernels, linear_kernels
from adeblur.engine.infer import load_model
from adeblur.errors import AdeblurError, ConfigError, ImageError
from adeblur.io import list_images, read_image, write_text
from adeblur.ops import PixelDependentFilter, direction_to_degrees, dominant_offset_direction

PSF_ANGLES = (0.0, 45.0, 90.0, 135.0)
#: CVPR 2020 Sec. 4.4: dominant offset direction per PSF angle.
PAPER_DEGREES = {0.0: 11.0, 45.0: 50.0, 90.0: 81.0, 135.0: 126.0}
#: scikit-image photos shipped inside the package (no download); horse, text and other drawings left out.
SAMPLE_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
    "immunohistochemistry", "brick", "grass", "gravel", "moon", "cell", "coins", "retina",
)  # fmt: skip


def axial_mean(degrees: Tensor, weights: Tensor | None = None) -> tuple[float | None, float, float]:
    """Weighted mean of axial angles (degrees, period 180) by doubled angles.

    Returns ``(mean in [0, 180) or None when the weights vanish or the axes cancel, resultant length R
    in [0, 1], total weight)``.

    >>> axial_mean(torch.tensor([170.0, 10.0]))[0]  # around 0, not 90
    0.0
    >>> [round(v, 3) for v in axial_mean(torch.tensor([30.0, 60.0]), torch.tensor([1.0, 3.0]))[:2]]
    [53.052, 0.901]
    """
    cosine, sine, total = doubled_angle_sums(degrees, weights)
    return resultant_axis(cosine, sine, total)


def doubled_angle_sums(degrees: Tensor, weights: Tensor | None = None) -> tuple[float, float, float]:
    """``(sum w cos 2a, sum w sin 2a, sum w)`` of axial angles ``a`` (degrees); unit weights by default."""
    doubled = torch.deg2rad(2 * degrees.double().flatten())
    weights = torch.ones_like(doubled) if weights is None else weights.double().flatten()
    return float((weights * doubled.cos()).sum()), float((weights * doubled.sin()).sum()), float(weights.sum())


def resultant_axis(cosine: float, sine: float, total: float) -> tuple[float | None, float, float]:
    """Doubled-angle sums -> ``(mean axis in [0, 180) or None, resultant length R, total weight)``."""
    length = math.hypot(cosine, sine)
    if total <= 0 or length <= 1e-12 * total:
        return None, 0.0, total
    mean = math.degrees(math.atan2(sine, cosine)) / 2 % 180.0
    return round(mean, 6) % 180.0, length / total, total


def offset_axes(offsets: Tensor) -> tuple[Tensor, Tensor]:
    """PDF offsets (B, 2*K*K, h, w) -> per-pixel axial angles (degrees, [0, 180)) and weights ``l1 - l2``."""
    axis = dominant_offset_direction(offsets.float(), mode="axis")
    return direction_to_degrees(axis, axial=True), axis.square().sum(1, keepdim=True)


def axial_difference(estimate: float | None, reference: float) -> float | None:
    """Signed axial difference estimate - reference, in (-90, 90]."""
    if estimate is None:
        return None
    return 90.0 - (90.0 - (estimate - reference)) % 180.0


def sample_photos() -> list[tuple[str, Tensor]]:
    """scikit-image's bundled photos (:data:`SAMPLE_PHOTOS`) as (name, (3, H, W) float32 in [0, 1])."""
    import skimage.data

    photos = []
    for name in SAMPLE_PHOTOS:
        array = getattr(skimage.data, name)()
        array = array[0] if name == "stereo_motorcycle" else array  # (left, right, disparity)
        image = torch.from_numpy(array).float() / 255.0
        image = image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)
        photos.append((name, image))
    return photos


def folder_photos(folder: str | Path) -> list[tuple[str, Tensor]]:
    """The images of ``folder`` (sorted) as (file name, (3, H, W)); grey becomes RGB, alpha is dropped."""
    photos = []
    for path in list_images(folder):
        image, _ = read_image(path)
        photos.append((path.name, image[:3] if image.shape[0] >= 3 else image[:1]))
    if not photos:
        raise ImageError(f"no images in {str(folder)!r}")
    return photos


def grid_crops(photos: Sequence[tuple[str, Tensor]], count: int, size: int) -> tuple[Tensor, list[str]]:
    """``count`` crops (N, 3, size, size), round-robin over the photos, each photo's from its centre outwards.

    A photo's crops lie on a regular grid of non-overlapping ``size`` x ``size`` windows centred on the
    photo; photos smaller than ``size`` are skipped.

    >>> photos = [("a", torch.rand(1, 20, 30)), ("b", torch.rand(3, 12, 12)), ("c", torch.rand(3, 9, 9))]
    >>> crops, names = grid_crops(photos, 4, 10)  # a: 2 x 3 windows; b: 1, centred; c: too small
    >>> crops.shape, names
    (torch.Size([4, 3, 10, 10]), ['a@0,10', 'b@1,1', 'a@10,10', 'a@0,0'])
    """
    per_photo = []
    for name, image in photos:
        height, width = image.shape[-2:]
        rows, columns = height // size, width // size
        if rows == 0 or columns == 0:
            continue
        top0, left0 = (height - rows * size) // 2, (width - columns * size) // 2
        cells = sorted(
            itertools.product(range(rows), range(columns)),
            key=lambda cell: ((cell[0] - (rows - 1) / 2) ** 2 + (cell[1] - (columns - 1) / 2) ** 2, cell),
        )
        per_photo.append([(name, image, top0 + row * size, left0 + column * size) for row, column in cells])
    chosen = [crop for round_ in itertools.zip_longest(*per_photo) for crop in round_ if crop is not None][:count]
    if len(chosen) < count:
        raise ImageError(f"only {len(chosen)} crops of {size}x{size} in the photos, {count} asked for")
    crops = [image[:, top : top + size, left : left + size].expand(3, -1, -1) for _, image, top, left in chosen]
    return torch.stack(crops), [f"{name}@{top},{left}" for name, _, top, left in chosen]


def pdf_modules(model: nn.Module) -> dict[str, PixelDependentFilter]:
    """The model's pixel-dependent filters with learned offsets, by qualified name, in module order."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, PixelDependentFilter) and module.learn_offsets
    }


def default_module(modules: Sequence[str]) -> str:
    """The first PDF module of the top level's encoder (the one ``--save-maps`` shows), else the first."""
    return next((name for name in modules if name.startswith("encoders.0.")), modules[0])


@torch.inference_mode()
def direction_check(
    model: nn.Module,
    images: Tensor,
    *,
    angles: Sequence[float] = PSF_ANGLES,
    length: float = 15.0,
) -> dict[str, list[dict]]:
    """Per PDF module and PSF angle: the images' dominant offset axes and their axial mean.

    Args:
        model: a SAPHNet with learned offsets, in eval mode.
        images: (N, 3, H, W) sharp images, on the model's device.

    Returns:
        ``{module name: [{"psf_degrees", "estimated_degrees", "error_degrees", "resultant_length",
        "per_image_degrees"}, ...]}``, one entry per angle.
    """
    modules = pdf_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no pixel-dependent filter with learned offsets")
    sums: dict[str, list[float]] = {}  # per module, this image: [sum w cos 2a, sum w sin 2a, sum w]

    def recording(name: str, module: nn.Module):
        # the model asks for offsets only where it returns maps: have every call compute them (no extra work)
        original = module.forward

        def forward(x: torch.Tensor, *, return_offsets: bool = False):
            y, offsets = original(x, return_offsets=True)
            entry = sums.setdefault(name, [0.0, 0.0, 0.0])
            for slot, value in enumerate(doubled_angle_sums(*offset_axes(offsets))):
                entry[slot] += value
            return (y, offsets) if return_offsets else y

        return forward

    for name, module in modules.items():
        module.forward = recording(name, module)
    kernels = linear_kernels(torch.full((len(angles),), float(length)), torch.tensor([float(a) for a in angles]))
    per_image: dict[str, list[list[float | None]]] = {name: [[] for _ in angles] for name in modules}
    try:
        for index, angle in enumerate(angles):
            blurred = blur_with_kernels(images, kernels[index : index + 1], border="reflect").clamp(0, 1)
            for image in blurred:
                sums.clear()
                model(image[None])
                for name in modules:
                    estimate = resultant_axis(*sums.get(name, (0.0, 0.0, 0.0)))[0]
                    per_image[name][index].append(None if estimate is None else round(estimate, 3))
    finally:
        for module in modules.values():
            del module.forward  # back to the class's forward
    results: dict[str, list[dict]] = {}
    for name in modules:
        results[name] = []
        for index, angle in enumerate(angles):
            found = [value for value in per_image[name][index] if value is not None]
            mean, resultant, _ = axial_mean(torch.tensor(found)) if found else (None, 0.0, 0.0)
            results[name].append(
                {
                    "psf_degrees": float(angle),
                    "estimated_degrees": None if mean is None else round(mean, 2),
                    "error_degrees": None if mean is None else round(axial_difference(mean, angle), 2),
                    "resultant_length": round(resultant, 4),
                    "per_image_degrees": per_image[name][index],
                }
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="weights file or training checkpoint of a saphnet* model")
    parser.add_argument("--model", help="registered model name (default: the one the weights record)")
    parser.add_argument("--images", help="folder of sharp images (default: scikit-image's sample photos)")
    parser.add_argument("--count", type=int, default=25, help="number of crops (paper: 25)")
    parser.add_argument("--size", type=int, default=256, help="crop side, pixels")
    parser.add_argument("--length", type=float, default=15.0, help="PSF length, pixels")
    parser.add_argument("--angles", type=float, nargs="+", default=list(PSF_ANGLES), help="PSF angles, degrees")
    parser.add_argument("--module", help="PDF module of the headline result (qualified name, see 'modules')")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the JSON to this file ('-': standard output only)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 1 or args.length < 0:
        parser.error("need --count >= 1, --size >= 1 and --length >= 0")
    started = time.perf_counter()
    try:
        model = load_model(args.model, args.weights, args.device)
        modules = list(pdf_modules(model))
        if not modules:
            raise ConfigError(f"model {type(model).__name__} from {args.weights!r} has no learned PDF offsets")
        module = args.module or default_module(modules)
        if module not in modules:
            raise ConfigError(f"no PDF module {module!r}; the model has {', '.join(modules)}")
        multiple = int(getattr(model, "size_multiple", 1))
        size = max(multiple, args.size // multiple * multiple)
        photos = folder_photos(args.images) if args.images else sample_photos()
        images, names = grid_crops(photos, args.count, size)
        device = next(model.parameters()).device
        results = direction_check(model, images.to(device), angles=args.angles, length=args.length)
    except AdeblurError as error:
        parser.exit(2, f"error: {error}\n")
    report = {
        "check": "dominant PDF offset direction per linear-PSF angle (CVPR 2020 Sec. 4.4)",
        "weights": str(args.weights),
        "model": args.model,  # None: the name recorded in the weights
        "model_class": type(model).__name__,
        "device": str(device),
        "images": {"source": args.images or "scikit-image sample photos", "count": len(names), "size": size,
                   "crops": names},
        "psf": {"kind": "linear", "length": args.length, "angles": args.angles, "border": "reflect"},
        "angle_convention": "degrees counter-clockwise from rightwards as displayed, axial, in [0, 180)",
        "module": module,
        "results": [
            {**entry, "paper_degrees": PAPER_DEGREES.get(entry["psf_degrees"])} for entry in results[module]
        ],
        "modules": {
            name: [{key: entry[key] for key in ("psf_degrees", "estimated_degrees", "resultant_length")}
                   for entry in entries]
            for name, entries in results.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.json and args.json != "-":
        write_text(args.json, text + "\n", what="benchmark JSON")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
