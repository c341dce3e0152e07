"""Tests of adeblur.data.transforms against slow, obviously-correct references."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from adeblur.data.transforms import (
    BlurAwareCrop,
    Compose,
    RandomCrop,
    RandomFlipRotate,
    blur_aware_crop,
    crop,
    flip_rotate,
    random_crop,
    random_flip_rotate,
    sample_generator,
)
from adeblur.errors import DatasetError

ALL_FLIP_ROTATIONS = [
    dict(hflip=h, vflip=v, rot90=k) for h, v, k in itertools.product([False, True], [False, True], range(4))
]


def coordinate_sample(height: int = 9, width: int = 11) -> dict:
    """Every image-like entry encodes its pixel coordinates, so a crop is identified by its content."""
    index = torch.arange(height * width, dtype=torch.float32).view(1, height, width)
    return {
        "blur": index.repeat(3, 1, 1),
        "sharp": index + 1000.0,
        "mask": (index % 2 == 0).float(),
        "displacement_start": torch.cat([index, -index]),
        "kernel": torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(0)),
        "name": "coords",
        "weight": 3,
    }


# --- crops ---------------------------------------------------------------------------------------


def test_random_crop_cuts_the_same_window_from_every_entry():
    sample = coordinate_sample()
    for seed in range(20):
        out = random_crop(sample, (4, 6), generator=seed)
        top_left = int(out["blur"][0, 0, 0])
        top, left = divmod(top_left, 11)
        expected = sample["blur"][0, top : top + 4, left : left + 6]
        assert out["blur"].shape == (3, 4, 6)
        assert torch.equal(out["blur"][1], expected)
        assert torch.equal(out["sharp"][0], expected + 1000.0)
        assert torch.equal(out["mask"][0], (expected % 2 == 0).float())
        assert torch.equal(out["displacement_start"], torch.stack([expected, -expected]))
        assert out["kernel"] is sample["kernel"]  # kernels are never cropped
        assert out["name"] == "coords" and out["weight"] == 3


def test_random_crop_reaches_every_position_uniformly():
    sample = {"blur": torch.arange(25.0).view(1, 5, 5)}
    generator = torch.Generator().manual_seed(1)
    counts = Counter(int(random_crop(sample, 3, generator=generator)["blur"][0, 0, 0]) for _ in range(1800))
    expected_corners = {5 * top + left for top in range(3) for left in range(3)}
    assert set(counts) == expected_corners
    assert all(abs(c / 1800 - 1 / 9) < 0.035 for c in counts.values())  # ~4.5 standard deviations


def test_crop_does_not_share_storage_and_leaves_input_untouched():
    sample = coordinate_sample()
    before = {k: v.clone() for k, v in sample.items() if isinstance(v, torch.Tensor)}
    out = crop(sample, 1, 2, 3, 3)
    out["blur"].zero_()
    for key, value in before.items():
        assert torch.equal(sample[key], value)
    assert out["blur"].untyped_storage().nbytes() == 3 * 3 * 3 * 4


def test_patch_larger_than_image_names_the_sample():
    sample = coordinate_sample(6, 20)
    with pytest.raises(DatasetError, match=r"'coords'.*8x8.*6x20"):
        random_crop(sample, 8, generator=0)
    with pytest.raises(DatasetError, match="coords"):
        blur_aware_crop(sample, 8, generator=0)


def test_entries_of_different_sizes_are_rejected():
    sample = {"blur": torch.rand(3, 8, 8), "sharp": torch.rand(3, 8, 9), "name": "odd"}
    with pytest.raises(ValueError, match="odd.*differ in size"):
        random_crop(sample, 4, generator=0)


@pytest.mark.parametrize("size", [0, (4,), (4, -1)])
def test_bad_patch_size(size):
    with pytest.raises(ValueError, match="patch size"):
        RandomCrop(size)


# --- LBAG blur-aware crop ------------------------------------------------------------------------


def lbag_sample(blob_rows: slice, blob_cols: slice, size: int = 24) -> dict:
    mask = torch.zeros(1, size, size)
    mask[:, blob_rows, blob_cols] = 1.0
    coordinates = torch.arange(size * size, dtype=torch.float32).view(1, size, size)
    return {"blur": coordinates, "mask": mask, "name": "blob"}


def uniform_centre_blur_probability(mask: torch.Tensor, patch: int) -> float:
    """Probability that a uniformly placed patch has a blurred centre pixel, by enumeration."""
    height, width = mask.shape[-2:]
    hits = [
        float(mask[0, top + patch // 2, left + patch // 2])
        for top in range(height - patch + 1)
        for left in range(width - patch + 1)
    ]
    return sum(hits) / len(hits)


def centre_is_blurred(patch: dict, size: int) -> bool:
    return bool(patch["mask"][0, size // 2, size // 2] > 0.5)


def test_blur_aware_crop_hits_blur_as_often_as_the_rule_says():
    sample = lbag_sample(slice(2, 8), slice(14, 22))  # 48 / 576 = 8.3 % blurred, above 5 %
    uniform = uniform_centre_blur_probability(sample["mask"], 8)
    expected = 0.5 * 1.0 + 0.5 * uniform  # forced half the time, and a forced centre is always blurred
    generator = torch.Generator().manual_seed(2)
    draws = 4000
    hits = sum(centre_is_blurred(blur_aware_crop(sample, 8, generator=generator), 8) for _ in range(draws))
    assert abs(hits / draws - expected) < 4 * (0.25 / draws) ** 0.5
    assert hits / draws > uniform + 0.3  # clearly not a plain random crop


def test_forced_centres_are_uniform_over_admissible_blurred_pixels():
    sample = lbag_sample(slice(2, 8), slice(14, 22))
    generator = torch.Generator().manual_seed(3)
    centres = Counter()
    for _ in range(2800):
        patch = blur_aware_crop(sample, 8, generator=generator, force_blur_probability=1.0)
        assert centre_is_blurred(patch, 8)
        centres[int(patch["blur"][0, 4, 4])] += 1  # the centre's index in the full image
    # Admissible centres (patch inside the 24x24 image): rows 4..20, cols 4..20 -> blob rows 4..7,
    # cols 14..20 -> 28 centres, each drawn ~100 times.
    assert len(centres) == 28
    assert all(50 < c < 150 for c in centres.values())


def test_too_little_blur_is_never_forced():
    sample = lbag_sample(slice(10, 14), slice(10, 15))  # 20 / 576 = 3.5 % blurred, below 5 %
    uniform = uniform_centre_blur_probability(sample["mask"], 8)
    generator = torch.Generator().manual_seed(4)
    draws = 3000
    hits = sum(
        centre_is_blurred(blur_aware_crop(sample, 8, generator=generator, force_blur_probability=1.0), 8)
        for _ in range(draws)
    )
    assert 0 < uniform < 0.5
    assert abs(hits / draws - uniform) < 4 * (uniform * (1 - uniform) / draws) ** 0.5
    # Lowering the threshold makes the same mask eligible.
    patch = blur_aware_crop(sample, 8, generator=0, force_blur_probability=1.0, min_blur_fraction=0.01)
    assert centre_is_blurred(patch, 8)


def test_blur_only_near_the_border_falls_back_to_a_random_crop():
    sample = lbag_sample(slice(0, 24), slice(0, 3))  # 12.5 % blurred but no admissible centre
    for seed in range(10):
        patch = blur_aware_crop(sample, 8, generator=seed, force_blur_probability=1.0)
        assert patch["blur"].shape == (1, 8, 8)


def test_blur_aware_crop_without_mask_is_a_random_crop():
    sample = coordinate_sample()
    del sample["mask"]
    for seed in range(5):
        assert torch.equal(
            blur_aware_crop(sample, 4, generator=seed)["blur"], random_crop(sample, 4, generator=seed)["blur"]
        )


# --- flips and rotations -------------------------------------------------------------------------


def warp_backward(image: torch.Tensor, field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """out(p) = image(p + field(p)) where p + field(p) is inside; also returns where it is."""
    _, height, width = image.shape
    out = torch.zeros_like(image)
    inside = torch.zeros(height, width, dtype=torch.bool)
    for y in range(height):
        for x in range(width):
            tx, ty = x + int(field[0, y, x]), y + int(field[1, y, x])
            if 0 <= tx < width and 0 <= ty < height:
                out[:, y, x] = image[:, ty, tx]
                inside[y, x] = True
    return out, inside


def assert_field_is_true_motion(
    first: torch.Tensor, second: torch.Tensor, field: torch.Tensor, inside_count: int
):
    """second(p) == first(p + field(p)) wherever p + field(p) is inside the image."""
    warped, inside = warp_backward(first, field)
    assert int(inside.sum()) == inside_count
    assert torch.equal(warped[:, inside], second[:, inside])


@pytest.mark.parametrize("operation", ALL_FLIP_ROTATIONS, ids=str)
def test_displacement_stays_the_true_motion_after_flip_rotate(operation):
    generator = torch.Generator().manual_seed(5)
    first = torch.rand(1, 5, 7, generator=generator)
    field = torch.randint(-2, 3, (2, 5, 7), generator=generator).float()
    second, inside = warp_backward(first, field)
    out = flip_rotate({"first": first, "second": second, "displacement_end": field}, **operation)
    assert_field_is_true_motion(out["first"], out["second"], out["displacement_end"], int(inside.sum()))


def test_displacement_stays_true_after_random_augmentation_and_crop():
    generator = torch.Generator().manual_seed(6)
    first = torch.rand(1, 9, 9, generator=generator)
    field = torch.randint(-1, 2, (2, 9, 9), generator=generator).float()
    second, _ = warp_backward(first, field)
    augment = Compose([RandomCrop(7), RandomFlipRotate()])
    for seed in range(16):
        out = augment({"first": first, "second": second, "displacement_start": field}, seed)
        # Inside the crop, the motion must still connect the two images where both ends are inside.
        warped, inside = warp_backward(out["first"], out["displacement_start"])
        assert inside.sum() > 20
        assert torch.equal(warped[:, inside], out["second"][:, inside])


def slow_blur(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """out(y, x) = sum_{a, b} kernel(a, b) * image(y + a - c, x + b - c), zero outside; loops only."""
    _, height, width = image.shape
    size = kernel.shape[-1]
    centre = size // 2
    out = torch.zeros_like(image)
    for y in range(height):
        for x in range(width):
            for a in range(size):
                for b in range(size):
                    sy, sx = y + a - centre, x + b - centre
                    if 0 <= sy < height and 0 <= sx < width:
                        out[:, y, x] += kernel[0, a, b] * image[:, sy, sx]
    return out


@pytest.mark.parametrize("operation", ALL_FLIP_ROTATIONS, ids=str)
def test_kernel_transform_commutes_with_blur(operation):
    generator = torch.Generator().manual_seed(7)
    sharp = torch.rand(2, 5, 6, generator=generator)
    kernel = torch.rand(1, 3, 3, generator=generator)  # no symmetry
    blurred = slow_blur(sharp, kernel)
    out = flip_rotate({"sharp": sharp, "blur": blurred, "kernel": kernel}, **operation)
    assert out["kernel"].shape == (1, 3, 3)
    torch.testing.assert_close(slow_blur(out["sharp"], out["kernel"]), out["blur"])


def test_rotation_direction_and_shape():
    image = torch.arange(6.0).view(1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    turned = flip_rotate({"blur": image}, rot90=1)["blur"]
    assert turned.tolist() == [[[2.0, 5.0], [1.0, 4.0], [0.0, 3.0]]]  # counter-clockwise on screen
    assert flip_rotate({"blur": image}, hflip=True)["blur"].tolist() == [[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]]
    assert flip_rotate({"blur": image}, vflip=True)["blur"].tolist() == [[[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]]


def test_random_flip_rotate_covers_the_eight_symmetries_equally():
    sample = {"blur": torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])}
    generator = torch.Generator().manual_seed(8)
    counts = Counter(
        tuple(random_flip_rotate(sample, generator=generator)["blur"].flatten().tolist()) for _ in range(2400)
    )
    assert len(counts) == 8
    assert all(abs(c / 2400 - 1 / 8) < 0.03 for c in counts.values())


def test_disabled_options_are_respected():
    sample = {"blur": torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])}
    outcomes = {
        tuple(random_flip_rotate(sample, generator=s, hflip=False, vflip=False)["blur"].flatten().tolist())
        for s in range(64)
    }
    assert len(outcomes) == 4  # rotations only
    outcomes = {
        tuple(random_flip_rotate(sample, generator=s, rot90=False, vflip=False)["blur"].flatten().tolist())
        for s in range(64)
    }
    assert outcomes == {(1.0, 2.0, 3.0, 4.0), (2.0, 1.0, 4.0, 3.0)}


# --- determinism ---------------------------------------------------------------------------------


def test_same_generator_seed_same_output_and_seeds_differ():
    sample = coordinate_sample(32, 32)
    augment = Compose([BlurAwareCrop(8), RandomFlipRotate()])
    first = augment(sample, sample_generator(0, 3))
    again = augment(sample, sample_generator(0, 3))
    for key in ("blur", "sharp", "mask", "displacement_start", "kernel"):
        assert torch.equal(first[key], again[key])
    windows = {
        tuple(augment(sample, sample_generator(0, i))["blur"][0].flatten().tolist()) for i in range(10)
    }
    assert len(windows) > 5


def test_sample_generator_mixes_all_indices():
    draws = {
        (seed, epoch, index): torch.randint(2**62, (), generator=sample_generator(seed, epoch, index)).item()
        for seed in range(3)
        for epoch in range(3)
        for index in range(3)
    }
    assert len(set(draws.values())) == len(draws)
    with pytest.raises(ValueError):
        sample_generator(-1)


def test_compose_passes_one_generator_through_in_order():
    sample = coordinate_sample()
    generator = torch.Generator().manual_seed(9)
    composed = Compose([RandomCrop(4), RandomFlipRotate()])(sample, generator)
    generator = torch.Generator().manual_seed(9)
    by_hand = random_flip_rotate(random_crop(sample, 4, generator=generator), generator=generator)
    assert torch.equal(composed["blur"], by_hand["blur"])


def test_generator_type_is_checked():
    with pytest.raises(TypeError):
        random_crop(coordinate_sample(), 4, generator=1.5)  # type: ignore[arg-type]
