"""Data: dataset readers, augmentations and synthetic blur.

- :mod:`adeblur.data.datasets`: paired folders, GoPro, HIDE, RealBlur-J/R, ReLoBlur (docs/datasets.md);
- :mod:`adeblur.data.transforms`: crops (incl. LBAG's blur-aware crop), flips, 90-degree rotations;
- :mod:`adeblur.data.synth`: camera-shake and local-motion blur, kernels, dead leaves (docs/synthetic-blur.md);
- :mod:`adeblur.data.synthetic`: the on-the-fly synthetic dataset and its batched, on-device counterpart;
- :mod:`adeblur.data.generate`: writing a synthetic paired dataset (``adeblur synth``).
"""

from __future__ import annotations

from adeblur.data.datasets import (
    LAYOUTS,
    GoProDataset,
    HIDEDataset,
    PairedFiles,
    PairedFolderDataset,
    PairedImageDataset,
    RealBlurDataset,
    ReLoBlurDataset,
    open_dataset,
    read_mask,
)
from adeblur.data.generate import write_synthetic_dataset
from adeblur.data.synthetic import KINDS, SyntheticBlurDataset, synthesize_batch
from adeblur.data.transforms import (
    BlurAwareCrop,
    Compose,
    RandomCrop,
    RandomFlipRotate,
    Sample,
    SampleTransform,
    blur_aware_crop,
    crop,
    flip_rotate,
    random_crop,
    random_flip_rotate,
    sample_generator,
)

__all__ = [
    "LAYOUTS",
    "GoProDataset",
    "HIDEDataset",
    "PairedFiles",
    "PairedFolderDataset",
    "PairedImageDataset",
    "RealBlurDataset",
    "ReLoBlurDataset",
    "open_dataset",
    "read_mask",
    "BlurAwareCrop",
    "Compose",
    "RandomCrop",
    "RandomFlipRotate",
    "Sample",
    "SampleTransform",
    "blur_aware_crop",
    "crop",
    "flip_rotate",
    "random_crop",
    "random_flip_rotate",
    "sample_generator",
    "KINDS",
    "SyntheticBlurDataset",
    "synthesize_batch",
    "write_synthetic_dataset",
]
