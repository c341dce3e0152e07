"""Write a synthetic paired dataset to disk (what ``adeblur synth`` does).

The layout is the paired one of DESIGN.md, which :class:`~adeblur.data.PairedFolderDataset` and
``adeblur evaluate`` read back: ``OUT/blur/NAME.png``, ``OUT/sharp/NAME.png``, plus ``OUT/mask/NAME.png``
(local blur: 255 = blurred) or ``OUT/kernel/NAME.png`` (global blur: the PSF, 16-bit, scaled so its
largest value is white; readers normalise it to sum 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from adeblur.data.synthetic import SyntheticBlurDataset, synthesize_batch
from adeblur.data.transforms import sample_generator
from adeblur.errors import DatasetError, ImageError
from adeblur.io import list_images, read_image, to_rgb, write_image

__all__ = ["write_synthetic_dataset"]

DEFAULT_DEAD_LEAVES_SIZE = (256, 256)


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    kind: str,
    count: int,
    seed: int = 0,
    sharp_dir: str | Path | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[str]:
    """Blur ``count`` sharp images and write the pairs; a generator yielding each pair's name when written.

    Args:
        out_dir: created if missing; must be empty (nothing is ever overwritten).
        kind: ``"local"`` (moving objects; writes ``mask/``) or ``"global"`` (camera shake; ``kernel/``).
        count: number of pairs. Sharp images are used in name order, cycling when ``count`` exceeds them.
        seed: pair ``i`` depends only on ``(seed, i)`` and the sharp images.
        sharp_dir: folder of sharp images; ``None`` draws dead-leaves images.
        size: ``(height, width)`` of random crops (images smaller than that are upscaled first, see
            :class:`~adeblur.data.synthetic.SyntheticBlurDataset`); ``None`` keeps sharp images whole and
            makes dead leaves of :data:`DEFAULT_DEAD_LEAVES_SIZE`.

    A pair whose writing fails is removed before the error propagates, so ``out_dir`` only ever holds
    complete pairs.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> list(write_synthetic_dataset(folder.name, kind="global", count=2, size=(48, 48)))
    ['dead_leaves_000000', 'dead_leaves_000001']
    >>> sorted(p.name for p in Path(folder.name).iterdir())
    ['blur', 'kernel', 'sharp']
    >>> folder.cleanup()
    """
    if kind not in ("local", "global"):
        raise DatasetError(f"synthetic blur kind must be 'local' or 'global', got {kind!r}")
    if count < 1:
        raise DatasetError(f"count must be at least 1, got {count}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatasetError(f"output folder {str(out_dir)!r} exists and is not empty; choose a new one")
    if sharp_dir is not None:
        sharp_dir = Path(sharp_dir)
        if not sharp_dir.is_dir():
            raise DatasetError(f"sharp image folder {str(sharp_dir)!r} is not a folder")
        if not list_images(sharp_dir):
            raise DatasetError(f"sharp image folder {str(sharp_dir)!r} holds no images")
    return _write_pairs(out_dir, kind, count, seed, sharp_dir, size)


def _write_pairs(
    out_dir: Path, kind: str, count: int, seed: int, sharp_dir: Path | None, size: tuple[int, int] | None
) -> Iterator[str]:
    samples = _samples(kind, count, seed, sharp_dir, size)
    extra = "mask" if kind == "local" else "kernel"
    for sample in samples:
        name = sample["name"]
        images = {"blur": (sample["blur"], 8), "sharp": (sample["sharp"], 8)}
        if kind == "local":
            images["mask"] = (sample["mask"], 8)
        else:
            kernel = sample["kernel"]
            images["kernel"] = (kernel / kernel.max(), 16)
        written: list[Path] = []
        try:
            for folder in ("blur", "sharp", extra):
                image, bit_depth = images[folder]
                written.append(write_image(out_dir / folder / f"{name}.png", image, bit_depth=bit_depth))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        yield name


def _samples(
    kind: str, count: int, seed: int, sharp_dir: Path | None, size: tuple[int, int] | None
) -> Iterator[dict]:
    if size is not None or sharp_dir is None:
        dataset = SyntheticBlurDataset(
            sharp_dir, kind=kind, patch_size=size or DEFAULT_DEAD_LEAVES_SIZE, length=count, seed=seed
        )
        for index in range(count):
            yield dataset[index]
        return
    # Whole images: each keeps its own size, so they are blurred one at a time.
    paths = list_images(sharp_dir)
    for index in range(count):
        path = paths[index % len(paths)]
        try:
            sharp = to_rgb(read_image(path)[0])[0]
        except ImageError as err:
            raise DatasetError(f"synthetic dataset: {err}") from err
        generator = sample_generator(seed, 0, index)
        out = synthesize_batch(sharp[None], kind, generator)
        sample = {key: value[0] for key, value in out.items()}
        sample["name"] = f"{path.stem}_{index:06d}"
        yield sample

