"""The training data pipeline: weighted sources, a resumable sample stream, device-side blur, a pair pool.

Training draws *numbered* samples: sample ``n`` (any integer >= 0) of a :class:`SampleStream` is a pure
function of ``(seed, n)``: which source (by the sources' weights), which item of it, which crop, flip
and blur. Step ``s`` of process ``rank`` among ``world`` reads a *chunk* of ``batch_size`` sample numbers
(:func:`chunk_sample_numbers`); the processes of a distributed run read disjoint numbers whose union is
what one process with the whole batch would read. So a run resumes at any step by starting the stream
at the right chunk, with no sampler state to save; this is the role torch's ``DistributedSampler``
plays for epochs, for an endless stream instead (the validation set, finite, does use it).

Making data is what starved training on a 2-core CPU (over a third of each step), so:

- ``synthesize_on="device"``: synthetic sources yield only sharp patches; :func:`finish_batch` blurs the
  whole batch at once with :func:`~adeblur.data.synthetic.synthesize_batch` on the training device (the
  GPU when there is one). ``"loader"`` blurs per sample in the DataLoader (workers, if any).
- :class:`PairPool` keeps ``size`` generated pairs in memory (float16 images, uint8 masks) and draws each
  batch from it with a random flip/rotation; every ``reuse`` steps one fresh batch replaces the oldest.
  Its content at any step is a pure function of the step, so resuming rebuilds it exactly.

Only the keys the losses use travel: ``blur``, ``sharp``, ``mask`` (all ones for sources without
masks, per sample, so GoPro and ReLoBlur mix in one batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from adeblur.data.datasets import open_dataset
from adeblur.data.synthetic import SyntheticBlurDataset, synthesize_batch
from adeblur.data.transforms import (
    BlurAwareCrop,
    Compose,
    RandomCrop,
    RandomFlipRotate,
    flip_rotate,
    sample_generator,
)
from adeblur.engine.config import SourceConfig, expand_path
from adeblur.errors import ConfigError, DatasetError

__all__ = [
    "TRAINING_KEYS",
    "ChunkSampler",
    "PairPool",
    "SampleStream",
    "build_source",
    "chunk_sample_numbers",
    "collate_samples",
    "finish_batch",
    "make_generator",
]

TRAINING_KEYS = ("blur", "sharp", "mask")
"""What a training batch holds (the losses need no more)."""

_SPLIT_LAYOUTS = ("gopro", "hide", "realblur", "reloblur")


def make_generator(device: torch.device | str, *seeds: int) -> torch.Generator:
    """A generator on ``device`` seeded by ``seeds`` (as :func:`~adeblur.data.transforms.sample_generator`).

    >>> make_generator("cpu", 1, 2).initial_seed() == make_generator("cpu", 1, 2).initial_seed()
    True
    """
    seed = sample_generator(*seeds).initial_seed() if seeds else 0
    return torch.Generator(device=device).manual_seed(seed)


def build_source(
    source: SourceConfig,
    *,
    patch_size: int | None,
    crop: str = "random",
    augment: bool = True,
    seed: int = 0,
    blur_on_device: bool = False,
    length: int | None = None,
    default_split: str = "train",
) -> Dataset:
    """The dataset a :class:`~adeblur.engine.config.SourceConfig` describes, cut to ``patch_size``.

    Synthetic sources blur in the dataset unless ``blur_on_device`` (then :func:`finish_batch` does);
    file layouts are cropped (``crop``: ``"random"`` or ``"blur-aware"``, LBAG's rule) to ``patch_size``
    (``None``: whole images) and flipped/rotated when ``augment``. ``length`` sets the number of
    samples of a synthetic source (its image count, or 1000 for dead leaves, by default).
    ``default_split``: the split of layouts that have splits when the source names none (validation
    sources pass ``"test"``, so they never read training images by default).

    Raises:
        ConfigError, DatasetError: unknown options, missing folders, unreadable data.
    """
    options = dict(source.options)
    if source.type == "synthetic":
        images = [str(expand_path(p)) for p in source.images] if source.images else None
        try:
            return SyntheticBlurDataset(
                images,
                kind=source.kind,
                patch_size=patch_size or 256,
                length=length,
                seed=seed,
                blur=not blur_on_device,
                cache_images=True,
                **options,
            )
        except TypeError as error:
            raise ConfigError(f"synthetic source options: {error}") from None
    transforms = []
    if patch_size is not None:
        transforms.append(BlurAwareCrop(patch_size) if crop == "blur-aware" else RandomCrop(patch_size))
    if augment:
        transforms.append(RandomFlipRotate())
    if source.type in _SPLIT_LAYOUTS:
        options.setdefault("split", source.split or default_split)
    elif source.split is not None:
        raise ConfigError(f"a {source.type} source has no splits (got split {source.split!r})")
    try:
        return open_dataset(
            expand_path(source.root), source.type, transform=Compose(transforms) if transforms else None,
            seed=seed, **options,
        )  # fmt: skip
    except TypeError as error:
        raise ConfigError(f"{source.type} source options: {error}") from None


class SampleStream(Dataset):
    """Endless mix of sources: item ``n`` is drawn from source ``i`` with probability ``weights[i] / sum``.

    Within a source the item is uniform (with replacement) and the source's epoch is set to ``n``, so its
    crop, flip and blur are new on every draw. Everything is a function of ``(seed, n)``.

    >>> from adeblur.engine.config import SourceConfig
    >>> stream = SampleStream([build_source(SourceConfig("synthetic", kind="global"), patch_size=16,
    ...                                     length=4, blur_on_device=True)], [1.0], seed=0)
    >>> sorted(stream[7]), stream[7]["sharp"].shape
    (['kind', 'name', 'sharp'], torch.Size([3, 16, 16]))
    """

    def __init__(self, sources: Sequence[Dataset], weights: Sequence[float], seed: int = 0) -> None:
        if len(sources) != len(weights) or not sources:
            raise ValueError("need one weight per source, and at least one source")
        if any(len(s) == 0 for s in sources):  # type: ignore[arg-type]
            raise DatasetError("a training source has no samples")
        self.sources = list(sources)
        total = float(sum(weights))
        self.probabilities = torch.tensor([w / total for w in weights], dtype=torch.float64)
        self.seed = int(seed)

    def __len__(self) -> int:
        return 2**62  # endless; samplers never enumerate it

    def __getitem__(self, number: int) -> dict[str, Any]:
        generator = sample_generator(self.seed, 7, number)
        which = int(torch.multinomial(self.probabilities, 1, generator=generator)) if len(self.sources) > 1 else 0
        source = self.sources[which]
        index = int(torch.randint(len(source), (), generator=generator))  # type: ignore[arg-type]
        source.set_epoch(number)  # type: ignore[attr-defined]
        return source[index]


def chunk_sample_numbers(chunk: int, batch_size: int, rank: int = 0, world: int = 1) -> list[int]:
    """The sample numbers of ``chunk`` (a batch) for process ``rank`` of ``world``.

    The ``world`` processes together read ``chunk * B * world ... (chunk + 1) * B * world - 1``, the same
    numbers one process with batch ``B * world`` reads.

    >>> chunk_sample_numbers(1, 2, rank=1, world=2), chunk_sample_numbers(1, 4)
    ([5, 7], [4, 5, 6, 7])
    """
    return [(chunk * batch_size + row) * world + rank for row in range(batch_size)]


class ChunkSampler(Sampler[list[int]]):
    """Batch sampler of a :class:`SampleStream`: chunks ``start, start + 1, ...`` for ever."""

    def __init__(self, start_chunk: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.start_chunk, self.batch_size, self.rank, self.world = start_chunk, batch_size, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        chunk = self.start_chunk
        while True:
            yield chunk_sample_numbers(chunk, self.batch_size, self.rank, self.world)
            chunk += 1


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch of :data:`TRAINING_KEYS`, filling what a sample lacks.

    A sample without ``mask`` gets an all-ones mask (everything blurred, as GoPro's frames), one without
    ``blur`` is waiting for device-side blur: its row of ``blur`` is a copy of ``sharp``, its ``kind``
    is listed in ``pending`` (None for ready rows). Other keys are dropped; names are kept.

    >>> batch = collate_samples([{"blur": torch.zeros(3, 2, 2), "sharp": torch.ones(3, 2, 2)},
    ...                          {"sharp": torch.ones(3, 2, 2), "kind": "local"}])
    >>> batch["mask"].shape, batch["pending"]
    (torch.Size([2, 1, 2, 2]), [None, 'local'])
    """
    sharp = torch.stack([s["sharp"] for s in samples])
    blur = torch.stack([s["blur"] if "blur" in s else s["sharp"] for s in samples])
    masks = [s.get("mask") for s in samples]
    mask = torch.stack([m if m is not None else sharp.new_ones(1, *sharp.shape[-2:]) for m in masks])
    pending = [None if "blur" in s else s.get("kind", "local") for s in samples]
    return {
        "blur": blur,
        "sharp": sharp,
        "mask": mask,
        "pending": pending,
        "names": [str(s.get("name", "")) for s in samples],
    }


def finish_batch(
    batch: Mapping[str, Any],
    device: torch.device | str,
    generator: torch.Generator,
    *,
    local_options: Mapping[str, Any] | None = None,
    global_options: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Move a collated batch to ``device`` and blur its pending rows there, batched by kind.

    Returns ``blur``, ``sharp``, ``mask`` on ``device``. Local rows take their moving objects from the
    other local rows of the batch (``synthesize_batch``'s default), so no second patch is loaded.

    >>> batch = collate_samples([{"sharp": torch.rand(3, 16, 16), "kind": "global"}])
    >>> out = finish_batch(batch, "cpu", torch.Generator().manual_seed(0), global_options={"kernel_size": 9,
    ...                    "length_range": (3, 5)})
    >>> bool((out["blur"] != out["sharp"]).any()), sorted(out)
    (True, ['blur', 'mask', 'sharp'])
    """
    out = {key: batch[key].to(device, non_blocking=True) for key in TRAINING_KEYS}
    pending = batch.get("pending") or []
    for kind in ("local", "global"):
        rows = [i for i, k in enumerate(pending) if k == kind]
        if not rows:
            continue
        index = torch.tensor(rows, device=out["sharp"].device)
        made = synthesize_batch(
            out["sharp"][index], kind, generator,
            local_options=local_options, global_options=global_options,
        )  # fmt: skip
        for key in ("blur", "sharp", "mask"):  # local blur composites its objects into the sharp image too
            out[key][index] = made[key]
    return out


class PairPool:
    """Generated training pairs kept in memory and reused: a ring of ``capacity // batch_size`` batches.

    :meth:`put` stores a batch in the slot after the previous one (overwriting the oldest);
    :meth:`draw` returns ``batch_size`` distinct stored pairs, each with a random flip/rotation when
    ``augment``. Images are stored as float16 (error below 2.5e-4 on [0, 1] values, finer than 8-bit
    quantisation), masks as uint8.

    >>> pool = PairPool(capacity=4, batch_size=2, device="cpu")
    >>> for _ in range(3):
    ...     pool.put({"blur": torch.rand(2, 3, 8, 8), "sharp": torch.rand(2, 3, 8, 8), "mask": torch.ones(2, 1, 8, 8)})
    >>> pool.filled, pool.draw(torch.Generator().manual_seed(0))["blur"].shape
    (4, torch.Size([2, 3, 8, 8]))
    """

    def __init__(self, capacity: int, batch_size: int, device: torch.device | str, augment: bool = True) -> None:
        if capacity < batch_size:
            raise ValueError(f"pool capacity {capacity} is smaller than a batch ({batch_size})")
        self.slots = capacity // batch_size
        self.batch_size = batch_size
        self.capacity = self.slots * batch_size
        self.device = torch.device(device)
        self.augment = augment
        self.store: dict[str, torch.Tensor] = {}
        self.next_slot = 0
        self.filled = 0

    def put(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Store a ``batch_size`` batch of :data:`TRAINING_KEYS`, replacing the oldest stored batch."""
        if not self.store:
            for key in TRAINING_KEYS:
                value = batch[key]
                dtype = torch.uint8 if key == "mask" else torch.float16
                self.store[key] = torch.empty(self.capacity, *value.shape[1:], dtype=dtype, device=self.device)
        start = self.next_slot * self.batch_size
        for key in TRAINING_KEYS:
            self.store[key][start : start + self.batch_size] = batch[key].to(self.device)
        self.next_slot = (self.next_slot + 1) % self.slots
        self.filled = min(self.capacity, self.filled + self.batch_size)

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``batch_size`` distinct stored pairs (float32 images, float masks), randomly flipped/rotated."""
        if self.filled < self.batch_size:
            raise RuntimeError("the pool holds less than one batch")
        index = torch.randperm(self.filled, generator=generator)[: self.batch_size].to(self.device)
        batch = {key: value[index].float() for key, value in self.store.items()}
        if not self.augment:
            return batch
        choices = torch.randint(8, (self.batch_size,), generator=generator).tolist()
        for transform in set(choices):
            rows = [i for i, c in enumerate(choices) if c == transform]
            part = flip_rotate(
                {key: value[rows] for key, value in batch.items()},
                hflip=bool(transform & 1), vflip=bool(transform & 2), rot90=transform >> 2,
            )  # fmt: skip
            for key, value in part.items():
                if value.shape[-2:] != batch[key].shape[-2:]:  # a quarter turn of a non-square patch
                    raise ValueError("pool augmentation with rotations needs square patches")
                batch[key][rows] = value
        return batch


def pool_first_chunk(step: int, reuse: int) -> int:
    """The first chunk a :class:`PairPool` must hold before training step ``step`` (0-based).

    The pool starts with chunks ``0 ... slots - 1``; before each step ``s > 0`` with ``s % reuse == 0``
    the next chunk replaces the oldest. So before step ``s`` the pool holds the ``slots`` chunks that
    start at ``(s - 1) // reuse`` (0 before step 0).

    >>> [pool_first_chunk(s, reuse=2) for s in range(6)]
    [0, 0, 0, 1, 1, 2]
    """
    return 0 if step <= 0 else (step - 1) // reuse


def make_loader(stream: SampleStream, start_chunk: int, batch_size: int, *, rank: int = 0, world: int = 1,
                workers: int = 0, pin_memory: bool = False) -> DataLoader:  # fmt: skip
    """A DataLoader of collated chunks of ``stream``, from ``start_chunk`` on, for ever."""
    return DataLoader(
        stream,
        batch_sampler=ChunkSampler(start_chunk, batch_size, rank, world),
        num_workers=workers,
        collate_fn=collate_samples,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )


def validation_batches(
    dataset: Dataset, count: int | None, *, rank: int = 0, world: int = 1
) -> tuple[list[int], Any]:
    """Indices of the validation set (``count`` of them, evenly spread; None: all) and this process's share.

    Uses :class:`torch.utils.data.DistributedSampler` (no shuffling) to split them among processes; it
    pads with repeats so every process has as many, so callers average per index, not per visit.
    """
    from torch.utils.data import DistributedSampler, Subset

    total = len(dataset)  # type: ignore[arg-type]
    if count is None or count >= total:
        indices = list(range(total))
    else:
        indices = sorted({math.floor(i * total / count) for i in range(count)})
    subset = Subset(dataset, indices)
    if world == 1:
        return indices, list(range(len(indices)))
    sampler = DistributedSampler(subset, num_replicas=world, rank=rank, shuffle=False, drop_last=False)
    return indices, list(sampler)
