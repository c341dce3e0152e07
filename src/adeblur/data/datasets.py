"""Readers for paired deblurring datasets: our paired folder layout and the published benchmarks.

Every dataset is a :class:`torch.utils.data.Dataset` of sample dicts:

- ``blur``, ``sharp``: ``(C, H, W)`` float32 in [0, 1]; with ``rgb=True`` (default) grey images are
  replicated to 3 channels and an alpha channel is dropped, because the models are RGB.
- ``name``: ``str``, unique within the dataset (e.g. ``"GOPR0384_11_00/000001"``), for output files.
- ``mask`` (where the layout has masks): ``(1, H, W)`` float32 in {0, 1}, 1 = blurred. Read as grey
  (the largest colour channel) and binarised: values above ``mask_threshold`` (0.5) are blurred.
- ``kernel`` (paired layout, where present): ``(1, Kh, Kw)`` float32 (usually square), the blur
  kernel, summing to 1.

The layouts (what the readers expect on disk, and where it was established) are in docs/datasets.md:

- ``paired``: ``root/blur/*``, ``root/sharp/*`` (same file names); optional ``root/mask/*`` and
  ``root/kernel/*`` matched by file stem.
- ``gopro`` (GOPRO_Large): ``root/{train,test}/<sequence>/{blur,blur_gamma,sharp}/<frame>.png``.
- ``hide`` (HIDE_dataset): ``root/train/*``, ``root/test/{test-close-ups,test-long-shot}/*``; the sharp
  images of both splits in ``root/GT/`` under the same file names.
- ``realblur``: ``root/RealBlur_{J,R}_{train,test}_list.txt``, lines ``<gt path> <blur path>``
  relative to ``root``.
- ``reloblur`` (LBAG's ``data/`` folder): ``root/dataset/{train,test}/<scene>/<seq>/<n>_{blur,sharp}.png``,
  masks ``root/masks/{train,test}/<scene>/<seq>/<n>.png``.

With ``check=True`` (default) a dataset validates itself when built: every blur image has its sharp
partner (and mask / kernel where the layout has them) and, by reading only the image headers, the
same size. Pairing problems, an empty or missing folder, unreadable headers and size mismatches are
all reported together in ONE :class:`~adeblur.errors.DatasetError` that names the dataset root and
lists the first offenders and how many there are. ``check=False`` skips only the header reads (pairing
is checked anyway, it costs nothing); a size mismatch then raises when that sample is loaded.

Samples are reproducible: a ``transform`` is called as ``transform(sample, generator)`` with
``generator = sample_generator(seed, epoch, index)``; :meth:`PairedImageDataset.set_epoch` changes
the augmentation from one epoch to the next.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from adeblur.data.synth import KERNEL_FILE_EXTENSIONS, load_kernel
from adeblur.data.transforms import Sample, SampleTransform, sample_generator
from adeblur.errors import DatasetError, ImageError
from adeblur.io import is_image_path, list_images, read_image, read_image_size, to_rgb

__all__ = [
    "GoProDataset",
    "HIDEDataset",
    "LAYOUTS",
    "PairedFiles",
    "PairedFolderDataset",
    "PairedImageDataset",
    "ReLoBlurDataset",
    "RealBlurDataset",
    "open_dataset",
    "read_mask",
]

LAYOUTS = ("paired", "gopro", "hide", "realblur", "reloblur")
"""Dataset layouts understood by :func:`open_dataset` (and ``adeblur evaluate --layout``)."""

MAX_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class PairedFiles:
    """The files behind one sample."""

    name: str
    blur: Path
    sharp: Path
    mask: Path | None = None
    kernel: Path | None = None


def read_mask(path: str | Path, threshold: float = 0.5) -> torch.Tensor:
    """Read a blur mask as ``(1, H, W)`` float32 in {0, 1} (1 = blurred).

    The grey value of a pixel is its largest colour channel (an alpha channel is ignored), so grey,
    RGB-replicated and single-colour masks all work; pixels whose grey value is above ``threshold``
    are blurred.
    """
    image, _ = read_image(path)
    colour = image[:3] if image.shape[0] in (3, 4) else image[:1]
    return (colour.amax(dim=0, keepdim=True) > threshold).float()


class PairedImageDataset(Dataset, ABC):
    """Base of the readers: a list of :class:`PairedFiles` plus loading, checking and transforms.

    Subclasses find their files in ``_scan`` (returning the pairs and the pairing problems); the
    shared checks then run once and raise a single :class:`DatasetError`.
    """

    layout: str  # the name in LAYOUTS, used in messages

    def __init__(
        self,
        root: str | Path,
        *,
        transform: SampleTransform | None = None,
        check: bool = True,
        rgb: bool = True,
        mask_threshold: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.rgb = rgb
        self.mask_threshold = mask_threshold
        self.seed = seed
        self.epoch = 0
        if not self.root.is_dir():
            raise DatasetError(f"{self.layout} dataset: {self.root} is not a folder")
        pairs, problems = self._scan()
        problems += _duplicate_names(pairs)
        if not pairs and not problems:
            problems.append("no image pairs found")
        if check:
            problems += _size_problems(pairs)
        if problems:
            raise DatasetError(_problem_message(f"{self.layout} dataset at {self.root}", problems))
        self.pairs: list[PairedFiles] = pairs

    @abstractmethod
    def _scan(self) -> tuple[list[PairedFiles], list[str]]:
        """Find the files: the pairs, and the problems met (missing partners, folders...)."""

    @property
    def names(self) -> list[str]:
        """Sample names, in index order."""
        return [pair.name for pair in self.pairs]

    def set_epoch(self, epoch: int) -> None:
        """Switch augmentation streams: sample ``i`` gets ``sample_generator(seed, epoch, i)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        files = self.pairs[index]
        sample: Sample = {"blur": self._read_photo(files.blur), "sharp": self._read_photo(files.sharp)}
        if files.mask is not None:
            sample["mask"] = read_mask(files.mask, self.mask_threshold)
        sizes = {key: tuple(value.shape[-2:]) for key, value in sample.items()}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{key} {h}x{w}" for key, (h, w) in sizes.items())
            raise DatasetError(
                f"{self.layout} dataset at {self.root}: sample {files.name!r} sizes differ: {listed}"
            )
        if files.kernel is not None:
            sample["kernel"] = load_kernel(files.kernel).to(torch.float32).unsqueeze(0)
        sample["name"] = files.name
        if self.transform is not None:
            sample = self.transform(sample, sample_generator(self.seed, self.epoch, index))
        return sample

    def _read_photo(self, path: Path) -> torch.Tensor:
        image, _ = read_image(path)
        return to_rgb(image)[0] if self.rgb else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)})"


class PairedFolderDataset(PairedImageDataset):
    """Our paired layout: ``root/blur/*`` and ``root/sharp/*`` with the same file names.

    Optional ``root/mask/*`` (any image format, e.g. ``.png`` masks for ``.jpg`` photos) and
    ``root/kernel/*`` (``.png``/``.npy``/``.mat``...) are matched by file stem; when such a folder
    exists every pair needs its file and every file its pair. ``with_kernels=False`` ignores
    ``kernel/``. Names are the blur file stems.

    >>> import tempfile, torch
    >>> from adeblur.io import write_image
    >>> folder = tempfile.TemporaryDirectory()
    >>> root = Path(folder.name)
    >>> for part in ("blur", "sharp", "mask"):
    ...     _ = (root / part).mkdir(), write_image(root / part / "a.png", torch.ones(1, 4, 6))
    >>> dataset = PairedFolderDataset(root)
    >>> sample = dataset[0]
    >>> sample["name"], tuple(sample["blur"].shape), tuple(sample["mask"].shape)
    ('a', (3, 4, 6), (1, 4, 6))
    >>> folder.cleanup()
    """

    layout = "paired"

    def __init__(
        self,
        root: str | Path,
        *,
        transform: SampleTransform | None = None,
        with_kernels: bool = True,
        check: bool = True,
        rgb: bool = True,
        mask_threshold: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.with_kernels = with_kernels
        super().__init__(
            root, transform=transform, check=check, rgb=rgb, mask_threshold=mask_threshold, seed=seed
        )

    def _scan(self) -> tuple[list[PairedFiles], list[str]]:
        problems: list[str] = []
        blur = _images_by_file_name(self.root, "blur", problems)
        sharp = _images_by_file_name(self.root, "sharp", problems)
        problems += _unpaired(blur, sharp, "blur", "sharp") + _unpaired(sharp, blur, "sharp", "blur")
        pairs = [PairedFiles(Path(n).stem, blur[n], sharp[n]) for n in sorted(blur.keys() & sharp.keys())]
        pairs = self._attach(pairs, "mask", _listed_images(self.root / "mask"), problems)
        if self.with_kernels:
            pairs = self._attach(pairs, "kernel", _listed_kernels(self.root / "kernel"), problems)
        return pairs, problems

    def _attach(
        self, pairs: list[PairedFiles], field: str, files: list[Path] | None, problems: list[str]
    ) -> list[PairedFiles]:
        """Match ``files`` (None when the folder is absent) to the pairs by stem."""
        if files is None:
            return pairs
        if not files:
            problems.append(f"{field}/ holds no files")
            return pairs
        by_stem = _by_key(files, lambda p: p.stem, f"{field}/", problems)
        wanted = {pair.name for pair in pairs}
        problems += [
            f"{field}/{by_stem[s].name} matches no blur image" for s in sorted(by_stem.keys() - wanted)
        ]
        attached = []
        for pair in pairs:
            if pair.name in by_stem:
                attached.append(replace(pair, **{field: by_stem[pair.name]}))
            else:
                problems.append(f"{pair.name}: no file in {field}/")
                attached.append(pair)
        return attached


class GoProDataset(PairedImageDataset):
    """GoPro (Nah et al., CVPR 2017) as published in GOPRO_Large.zip.

    ``root/{train,test}/<sequence>/{blur,blur_gamma,sharp}/<frame>.png``; ``blur_folder`` picks the
    linear (``blur``) or gamma-averaged (``blur_gamma``) blurred frames. Names ``<sequence>/<frame>``.
    """

    layout = "gopro"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        blur_folder: str = "blur",
        *,
        transform: SampleTransform | None = None,
        check: bool = True,
        rgb: bool = True,
        seed: int = 0,
    ) -> None:
        self.split = _choice("split", split, ("train", "test"))
        self.blur_folder = _choice("blur_folder", blur_folder, ("blur", "blur_gamma"))
        super().__init__(root, transform=transform, check=check, rgb=rgb, seed=seed)

    def _scan(self) -> tuple[list[PairedFiles], list[str]]:
        problems: list[str] = []
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            return [], [f"missing folder {self.split}/"]
        sequences = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not sequences:
            problems.append(f"{self.split}/ holds no sequence folders")
        pairs = []
        for sequence in sequences:
            prefix = f"{self.split}/{sequence.name}"
            blur = _images_by_file_name(sequence, self.blur_folder, problems, prefix)
            sharp = _images_by_file_name(sequence, "sharp", problems, prefix)
            problems += _unpaired(blur, sharp, f"{prefix}/{self.blur_folder}", f"{prefix}/sharp")
            problems += _unpaired(sharp, blur, f"{prefix}/sharp", f"{prefix}/{self.blur_folder}")
            pairs += [
                PairedFiles(f"{sequence.name}/{Path(n).stem}", blur[n], sharp[n])
                for n in sorted(blur.keys() & sharp.keys())
            ]
        return pairs, problems


class HIDEDataset(PairedImageDataset):
    """HIDE (Shen et al., ICCV 2019) as published in HIDE_dataset.zip.

    Blurred images in ``root/train/`` and ``root/test/{test-close-ups,test-long-shot}/``; the sharp
    images of both splits share ``root/GT/`` under the same file names. ``subset`` selects one test
    folder (``"close-ups"`` or ``"long-shot"``; ``None`` = both). Names: the file stem for train,
    ``test-close-ups/<stem>`` / ``test-long-shot/<stem>`` for test.
    """

    layout = "hide"
    SUBSETS = ("close-ups", "long-shot")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        subset: str | None = None,
        *,
        transform: SampleTransform | None = None,
        check: bool = True,
        rgb: bool = True,
        seed: int = 0,
    ) -> None:
        self.split = _choice("split", split, ("train", "test"))
        if subset is not None:
            _choice("subset", subset, self.SUBSETS)
            if self.split != "test":
                raise DatasetError(f"hide dataset: subset={subset!r} exists only for split='test'")
        self.subset = subset
        super().__init__(root, transform=transform, check=check, rgb=rgb, seed=seed)

    def _scan(self) -> tuple[list[PairedFiles], list[str]]:
        problems: list[str] = []
        sharp = _images_by_file_name(self.root, "GT", problems)
        if self.split == "train":
            folders = {"train": ""}
        else:
            subsets = self.SUBSETS if self.subset is None else (self.subset,)
            folders = {f"test/test-{s}": f"test-{s}/" for s in subsets}
        pairs = []
        for folder, name_prefix in folders.items():
            blur = _images_by_file_name(self.root, folder, problems)
            problems += _unpaired(blur, sharp, folder, "GT")
            pairs += [
                PairedFiles(f"{name_prefix}{Path(n).stem}", blur[n], sharp[n])
                for n in sorted(blur.keys() & sharp.keys())
            ]
        return pairs, problems


class RealBlurDataset(PairedImageDataset):
    """RealBlur-J / RealBlur-R (Rim et al., ECCV 2020) through the authors' list files.

    ``root`` holds ``RealBlur-J_ECC_IMCORR_centroid_itensity_ref/``,
    ``RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref/`` and ``RealBlur_{J,R}_{train,test}_list.txt``.
    Each list line is ``<gt path> <blur path>`` (ground truth FIRST), relative to ``root``;
    ``list_file`` replaces the default list (its entries are still relative to ``root``). Names are
    ``<scene>/<n>`` for ``.../<scene>/blur/blur_<n>.png``, otherwise the blur path without extension.
    """

    layout = "realblur"

    def __init__(
        self,
        root: str | Path,
        variant: str = "J",
        split: str = "train",
        list_file: str | Path | None = None,
        *,
        transform: SampleTransform | None = None,
        check: bool = True,
        rgb: bool = True,
        seed: int = 0,
    ) -> None:
        self.variant = _choice("variant", variant, ("J", "R"))
        self.split = _choice("split", split, ("train", "test"))
        self.list_file = (
            Path(list_file)
            if list_file is not None
            else Path(root) / f"RealBlur_{self.variant}_{self.split}_list.txt"
        )
        super().__init__(root, transform=transform, check=check, rgb=rgb, seed=seed)

    def _scan(self) -> tuple[list[PairedFiles], list[str]]:
        if not self.list_file.is_file():
            return [], [f"missing list file {self.list_file}"]
        problems: list[str] = []
        pairs = []
        lines = self.list_file.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                problems.append(f"{self.list_file.name} line {number}: expected '<gt path> <blur path>'")
                continue
            sharp, blur = (self.root / field for field in fields)
            missing = [str(p.relative_to(self.root)) for p in (blur, sharp) if not p.is_file()]
            if missing:
                problems.append(f"{self.list_file.name} line {number}: missing {' and '.join(missing)}")
                continue
            pairs.append(PairedFiles(_realblur_name(fields[1]), blur, sharp))
        return pairs, problems


class ReLoBlurDataset(PairedImageDataset):
    """ReLoBlur (Li et al., AAAI 2023) in the layout of the authors' LBAG code, with blur masks.

    ``root`` is LBAG's ``data/`` folder: ``root/dataset/{train,test}/<scene>/<seq>/<n>_blur.png`` and
    ``<n>_sharp.png``, masks ``root/masks/{train,test}/<scene>/<seq>/<n>.png`` (sub-folders are
    searched at any depth). ``mask_root`` points elsewhere for the masks (same tree below it, e.g.
    the re-annotated masks released with LMD-ViT); ``with_masks=False`` reads pairs only. Names are
    ``<scene>/<seq>/<n>``, as in LBAG.
    """

    layout = "reloblur"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        mask_root: str | Path | None = None,
        with_masks: bool = True,
        transform: SampleTransform | None = None,
        check: bool = True,
        rgb: bool = True,
        mask_threshold: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.split = _choice("split", split, ("train", "test"))
        self.mask_root = Path(mask_root) if mask_root is not None else Path(root) / "masks"
        self.with_masks = with_masks
        super().__init__(
            root, transform=transform, check=check, rgb=rgb, mask_threshold=mask_threshold, seed=seed
        )

    def _scan(self) -> tuple[list[PairedFiles], list[str]]:
        image_dir = self.root / "dataset" / self.split
        if not image_dir.is_dir():
            return [], [f"missing folder dataset/{self.split}/"]
        problems: list[str] = []
        blur: dict[str, Path] = {}
        sharp: dict[str, Path] = {}
        for path in _images_below(image_dir):
            relative = path.relative_to(image_dir)
            for suffix, found in (("_blur", blur), ("_sharp", sharp)):
                if relative.stem.endswith(suffix):
                    name = (relative.parent / relative.stem[: -len(suffix)]).as_posix()
                    if name in found:
                        problems.append(f"{relative.parent.as_posix()}: two {suffix[1:]} images for {name}")
                    found[name] = path
        problems += [
            f"{n}: no {n.rsplit('/', 1)[-1]}_sharp image" for n in sorted(blur.keys() - sharp.keys())
        ]
        problems += [f"{n}: no {n.rsplit('/', 1)[-1]}_blur image" for n in sorted(sharp.keys() - blur.keys())]
        names = sorted(blur.keys() & sharp.keys())
        if not self.with_masks:
            return [PairedFiles(n, blur[n], sharp[n]) for n in names], problems
        mask_dir = self.mask_root / self.split
        if not mask_dir.is_dir():
            return [], [
                *problems,
                f"missing mask folder {mask_dir} (pass with_masks=False to read pairs only)",
            ]
        masks = _by_key(
            _images_below(mask_dir),
            lambda p: p.relative_to(mask_dir).with_suffix("").as_posix(),
            "masks: ",
            problems,
        )
        problems += [f"{n}: no mask in {mask_dir}" for n in names if n not in masks]
        return [PairedFiles(n, blur[n], sharp[n], mask=masks.get(n)) for n in names], problems


def open_dataset(root: str | Path, layout: str = "paired", **options: Any) -> PairedImageDataset:
    """Open the dataset at ``root`` in one of :data:`LAYOUTS`; ``options`` go to its reader.

    >>> open_dataset("anywhere", layout="lmdb")
    Traceback (most recent call last):
    ...
    adeblur.errors.DatasetError: unknown dataset layout 'lmdb'; expected one of paired, gopro, ...
    """
    readers: dict[str, type[PairedImageDataset]] = {
        "paired": PairedFolderDataset,
        "gopro": GoProDataset,
        "hide": HIDEDataset,
        "realblur": RealBlurDataset,
        "reloblur": ReLoBlurDataset,
    }
    if layout not in readers:
        raise DatasetError(f"unknown dataset layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return readers[layout](root, **options)


# --- helpers -------------------------------------------------------------------------------------


def _choice(option: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise DatasetError(f"{option}={value!r} is not one of {', '.join(map(repr, allowed))}")
    return value


def _listed_images(folder: Path) -> list[Path] | None:
    """The images of ``folder``; None when it does not exist."""
    return list_images(folder) if folder.is_dir() else None


def _listed_kernels(folder: Path) -> list[Path] | None:
    if not folder.is_dir():
        return None
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in KERNEL_FILE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _images_below(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if is_image_path(p) and not p.name.startswith(".") and p.is_file()
    )


def _images_by_file_name(root: Path, folder: str, problems: list[str], label: str = "") -> dict[str, Path]:
    """``{file name: path}`` for the images in ``root/folder``; a missing or empty folder is a problem."""
    shown = f"{label}/{folder}" if label else folder
    images = _listed_images(root / folder)
    if images is None:
        problems.append(f"missing folder {shown}/")
        return {}
    if not images:
        problems.append(f"{shown}/ holds no images")
    return {p.name: p for p in images}


def _unpaired(have: dict[str, Path], other: dict[str, Path], have_label: str, other_label: str) -> list[str]:
    if not have or not other:  # an empty or missing side is reported once, not per file
        return []
    return [f"{have_label}/{n} has no partner in {other_label}/" for n in sorted(have.keys() - other.keys())]


def _by_key(
    files: Iterable[Path], key: Callable[[Path], str], label: str, problems: list[str]
) -> dict[str, Path]:
    """Index files by ``key(path)``; several files with one key are a problem (ambiguous partner)."""
    grouped: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        grouped[key(path)].append(path)
    for name, paths in sorted(grouped.items()):
        if len(paths) > 1:
            problems.append(f"{label}{' and '.join(p.name for p in paths)} share the name {name}")
    return {name: paths[0] for name, paths in grouped.items()}


def _duplicate_names(pairs: list[PairedFiles]) -> list[str]:
    counts = Counter(pair.name for pair in pairs)
    return [f"{count} samples are named {name!r}" for name, count in sorted(counts.items()) if count > 1]


def _size_problems(pairs: list[PairedFiles]) -> list[str]:
    """Compare header sizes of each pair's blur, sharp and mask; unreadable headers are problems too."""
    problems = []
    for pair in pairs:
        sizes = {}
        for role in ("blur", "sharp", "mask"):
            path = getattr(pair, role)
            if path is None:
                continue
            try:
                sizes[role] = tuple(read_image_size(path))
            except ImageError as error:
                problems.append(f"{pair.name}: {error}")
        if len(set(sizes.values())) > 1:
            problems.append(
                f"{pair.name}: sizes differ ("
                + ", ".join(f"{r} {h}x{w}" for r, (h, w) in sizes.items())
                + ")"
            )
    return problems


def _problem_message(what: str, problems: list[str]) -> str:
    listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"; ... and {more} more" if more > 0 else ""
    return f"{what}: {len(problems)} problem(s): {listed}{tail}".replace("\r", " ").replace("\n", " ")


_REALBLUR_BLUR_PATH = re.compile(r"(?:^|/)(?P<scene>[^/]+)/blur/blur_(?P<index>[^/]+)$")


def _realblur_name(blur_path: str) -> str:
    without_extension = Path(blur_path).with_suffix("").as_posix()
    match = _REALBLUR_BLUR_PATH.search(without_extension)
    return f"{match['scene']}/{match['index']}" if match else without_extension
