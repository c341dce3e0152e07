"""Tests of adeblur.data.datasets on tiny fake trees of every layout, built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adeblur.data.datasets import (
    LAYOUTS,
    GoProDataset,
    HIDEDataset,
    PairedFolderDataset,
    RealBlurDataset,
    ReLoBlurDataset,
    open_dataset,
    read_mask,
)
from adeblur.data.transforms import Compose, RandomCrop, RandomFlipRotate
from adeblur.errors import DatasetError

SHARED_LEVIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "levin2009"


def write_png(path: Path, seed: int, size: tuple[int, int] = (16, 16), channels: int = 3) -> torch.Tensor:
    """Write a random 8-bit PNG; return what a reader must give back, (C, H, W) in [0, 1]."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def half_mask(size: int = 16) -> np.ndarray:
    """Left half blurred (255), plus two grey levels either side of the 0.5 threshold."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 2] = 255
    mask[0, -1] = 200  # 0.78: blurred
    mask[1, -1] = 100  # 0.39: sharp
    return mask


def expected_half_mask(size: int = 16) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[:, :, : size // 2] = 1
    mask[0, 0, -1] = 1
    return mask


def error_message(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- paired layout -------------------------------------------------------------------------------


@pytest.fixture
def paired_root(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "paired"
    expected = {}
    for seed, name in enumerate(["b", "a"]):
        expected[f"{name}/blur"] = write_png(root / "blur" / f"{name}.png", seed)
        expected[f"{name}/sharp"] = write_png(root / "sharp" / f"{name}.png", seed + 10)
        write_mask(root / "mask" / f"{name}.png", half_mask())
        kernel = np.random.default_rng(seed).random((5, 5)).astype(np.float32)
        kernel /= kernel.sum()
        (root / "kernel").mkdir(exist_ok=True)
        np.save(root / "kernel" / f"{name}.npy", kernel)
        expected[f"{name}/kernel"] = torch.from_numpy(kernel)
    return root, expected


def test_paired_layout_reads_pairs_masks_and_kernels(paired_root):
    root, expected = paired_root
    dataset = PairedFolderDataset(root)
    assert len(dataset) == 2 and dataset.names == ["a", "b"]
    for index, name in enumerate(["a", "b"]):
        sample = dataset[index]
        assert sample["name"] == name
        assert sample["blur"].dtype == torch.float32 and sample["blur"].shape == (3, 16, 16)
        torch.testing.assert_close(sample["blur"], expected[f"{name}/blur"])
        torch.testing.assert_close(sample["sharp"], expected[f"{name}/sharp"])
        assert torch.equal(sample["mask"], expected_half_mask())
        assert sample["kernel"].shape == (1, 5, 5) and sample["kernel"].dtype == torch.float32
        torch.testing.assert_close(sample["kernel"][0], expected[f"{name}/kernel"])


def test_paired_masks_match_by_stem_and_kernels_can_be_ignored(tmp_path):
    root = tmp_path / "jpeg"
    (root / "blur").mkdir(parents=True)
    (root / "sharp").mkdir()
    for name in ("x", "y"):
        Image.fromarray(np.full((12, 10, 3), 128, np.uint8)).save(root / "blur" / f"{name}.jpg")
        Image.fromarray(np.full((12, 10, 3), 90, np.uint8)).save(root / "sharp" / f"{name}.jpg")
        write_mask(root / "mask" / f"{name}.png", np.full((12, 10), 255))
    (root / "kernel").mkdir()
    (root / "kernel" / "unrelated.npy").write_bytes(b"not a kernel")
    with pytest.raises(DatasetError, match="unrelated.npy matches no blur image"):
        PairedFolderDataset(root)
    dataset = PairedFolderDataset(root, with_kernels=False)
    sample = dataset[1]
    assert sample["name"] == "y" and "kernel" not in sample
    assert torch.equal(sample["mask"], torch.ones(1, 12, 10))


def test_grey_images_are_replicated_to_rgb_unless_asked_not_to(tmp_path):
    root = tmp_path / "grey"
    grey = write_png(root / "blur" / "g.png", 0, channels=1)
    write_png(root / "sharp" / "g.png", 1, channels=1)
    rgb_sample = PairedFolderDataset(root)[0]
    assert rgb_sample["blur"].shape == (3, 16, 16)
    assert all(torch.equal(rgb_sample["blur"][c], grey[0]) for c in range(3))
    assert PairedFolderDataset(root, rgb=False)[0]["blur"].shape == (1, 16, 16)


def test_read_mask_takes_the_largest_colour_channel(tmp_path):
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[0, 0] = (255, 0, 0)  # red marks blur
    mask[1, 1] = (60, 60, 60)
    Image.fromarray(mask).save(tmp_path / "m.png")
    read = read_mask(tmp_path / "m.png")
    assert read.shape == (1, 4, 4) and read.sum() == 1 and read[0, 0, 0] == 1
    assert read_mask(tmp_path / "m.png", threshold=0.2).sum() == 2


def test_missing_partners_on_either_side_give_one_error(paired_root):
    root, _ = paired_root
    write_png(root / "blur" / "only_blur.png", 3)
    write_png(root / "sharp" / "only_sharp.png", 4)
    write_mask(root / "mask" / "orphan.png", half_mask())
    (root / "mask" / "a.png").unlink()
    with pytest.raises(DatasetError) as excinfo:
        PairedFolderDataset(root)
    message = error_message(excinfo)
    assert str(root) in message and "4 problem(s)" in message
    assert "blur/only_blur.png has no partner in sharp/" in message
    assert "sharp/only_sharp.png has no partner in blur/" in message
    assert "mask/orphan.png matches no blur image" in message
    assert "a: no file in mask/" in message


def test_size_mismatch_is_found_from_headers_or_at_load(paired_root):
    root, _ = paired_root
    write_png(root / "sharp" / "a.png", 5, size=(16, 15))
    write_mask(root / "mask" / "b.png", np.zeros((8, 16)))
    with pytest.raises(DatasetError) as excinfo:
        PairedFolderDataset(root)
    message = error_message(excinfo)
    assert "2 problem(s)" in message
    assert "a: sizes differ (blur 16x16, sharp 16x15, mask 16x16)" in message
    assert "b: sizes differ (blur 16x16, sharp 16x16, mask 8x16)" in message
    dataset = PairedFolderDataset(root, check=False)
    with pytest.raises(DatasetError, match="'a' sizes differ: blur 16x16, sharp 16x15"):
        dataset[0]


def test_unreadable_image_is_listed(paired_root):
    root, _ = paired_root
    (root / "sharp" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"1 problem\(s\): a: .*a\.png"):
        PairedFolderDataset(root)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty" / "blur").mkdir(parents=True)
    (tmp_path / "empty" / "sharp").mkdir()
    with pytest.raises(DatasetError) as excinfo:
        PairedFolderDataset(tmp_path / "empty")
    message = error_message(excinfo)
    assert (
        "2 problem(s)" in message
        and "blur/ holds no images" in message
        and "sharp/ holds no images" in message
    )
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="missing folder blur/; missing folder sharp/"):
        PairedFolderDataset(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="is not a folder"):
        PairedFolderDataset(tmp_path / "absent")


def test_many_offenders_are_summarised_on_one_line(tmp_path):
    root = tmp_path / "many"
    write_png(root / "sharp" / "keep.png", 0)
    write_png(root / "blur" / "keep.png", 0)
    for index in range(13):
        write_png(root / "blur" / f"lonely{index:02d}.png", index)
    with pytest.raises(DatasetError) as excinfo:
        PairedFolderDataset(root)
    message = error_message(excinfo)
    assert "13 problem(s)" in message and message.endswith("; ... and 3 more")
    assert "lonely09" in message and "lonely10" not in message


def test_transform_is_deterministic_per_seed_epoch_and_index(paired_root):
    root, _ = paired_root
    augment = Compose([RandomCrop(6), RandomFlipRotate()])
    dataset = PairedFolderDataset(root, transform=augment, seed=3)
    first = dataset[0]
    assert first["blur"].shape == (3, 6, 6) and first["mask"].shape == (1, 6, 6)
    assert first["kernel"].shape == (1, 5, 5) and first["name"] == "a"
    assert torch.equal(dataset[0]["blur"], first["blur"])

    def crops(data) -> set:
        return {tuple(data[i]["blur"].flatten().tolist()) for i in range(2)}

    baseline = crops(dataset)
    assert crops(PairedFolderDataset(root, transform=augment, seed=3)) == baseline
    dataset.set_epoch(1)
    assert crops(dataset) != baseline
    assert crops(PairedFolderDataset(root, transform=augment, seed=4)) != baseline
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["blur"].shape == (2, 3, 6, 6) and batch["name"] == ["a", "b"]


# --- GoPro ---------------------------------------------------------------------------------------


def make_gopro(root: Path) -> dict:
    expected = {}
    seed = 0
    for split, sequences in {
        "train": ["GOPR0372_07_00", "GOPR0374_11_00"],
        "test": ["GOPR0384_11_00"],
    }.items():
        for sequence in sequences:
            for frame in ("000047", "000048"):
                folder = root / split / sequence
                seed += 3
                expected[f"{sequence}/{frame}/blur"] = write_png(folder / "blur" / f"{frame}.png", seed)
                expected[f"{sequence}/{frame}/blur_gamma"] = write_png(
                    folder / "blur_gamma" / f"{frame}.png", seed + 1
                )
                expected[f"{sequence}/{frame}/sharp"] = write_png(folder / "sharp" / f"{frame}.png", seed + 2)
    return expected


def test_gopro_layout(tmp_path):
    expected = make_gopro(tmp_path)
    train = GoProDataset(tmp_path, "train")
    assert train.names == [
        "GOPR0372_07_00/000047",
        "GOPR0372_07_00/000048",
        "GOPR0374_11_00/000047",
        "GOPR0374_11_00/000048",
    ]
    sample = train[2]
    torch.testing.assert_close(sample["blur"], expected["GOPR0374_11_00/000047/blur"])
    torch.testing.assert_close(sample["sharp"], expected["GOPR0374_11_00/000047/sharp"])
    assert "mask" not in sample and "kernel" not in sample
    gamma = GoProDataset(tmp_path, "test", blur_folder="blur_gamma")
    assert gamma.names == ["GOPR0384_11_00/000047", "GOPR0384_11_00/000048"]
    torch.testing.assert_close(gamma[1]["blur"], expected["GOPR0384_11_00/000048/blur_gamma"])


def test_gopro_errors(tmp_path):
    make_gopro(tmp_path)
    (tmp_path / "train" / "GOPR0372_07_00" / "sharp" / "000048.png").unlink()
    write_png(tmp_path / "train" / "GOPR0374_11_00" / "sharp" / "000049.png", 0)
    (tmp_path / "train" / "GOPR0999_00_00" / "blur").mkdir(parents=True)
    write_png(tmp_path / "train" / "GOPR0999_00_00" / "blur" / "000001.png", 0)
    with pytest.raises(DatasetError) as excinfo:
        GoProDataset(tmp_path, "train")
    message = error_message(excinfo)
    assert "gopro dataset at" in message and "3 problem(s)" in message
    assert "train/GOPR0372_07_00/blur/000048.png has no partner in train/GOPR0372_07_00/sharp/" in message
    assert "train/GOPR0374_11_00/sharp/000049.png has no partner in train/GOPR0374_11_00/blur/" in message
    assert "missing folder train/GOPR0999_00_00/sharp/" in message
    with pytest.raises(DatasetError, match="missing folder train/"):
        GoProDataset(tmp_path / "train", "train")
    with pytest.raises(DatasetError, match="blur_folder='blurry'"):
        GoProDataset(tmp_path, "train", blur_folder="blurry")


# --- HIDE ----------------------------------------------------------------------------------------


def make_hide(root: Path) -> dict:
    expected = {}
    layout = {
        "train": ["10fromGOPR1021", "1fromGOPR0950"],
        "test/test-close-ups": ["3fromGOPR0882"],
        "test/test-long-shot": ["50fromGOPR1096", "5fromGOPR1096"],
    }
    for seed, (folder, names) in enumerate(layout.items()):
        for name in names:
            expected[f"{name}/blur"] = write_png(root / folder / f"{name}.png", seed)
            expected[f"{name}/sharp"] = write_png(root / "GT" / f"{name}.png", seed + 100)
    return expected


def test_hide_layout(tmp_path):
    expected = make_hide(tmp_path)
    train = HIDEDataset(tmp_path, "train")
    assert train.names == ["10fromGOPR1021", "1fromGOPR0950"]
    torch.testing.assert_close(train[1]["sharp"], expected["1fromGOPR0950/sharp"])
    test = HIDEDataset(tmp_path, "test")
    assert test.names == [
        "test-close-ups/3fromGOPR0882",
        "test-long-shot/50fromGOPR1096",
        "test-long-shot/5fromGOPR1096",
    ]
    torch.testing.assert_close(test[0]["blur"], expected["3fromGOPR0882/blur"])
    torch.testing.assert_close(test[0]["sharp"], expected["3fromGOPR0882/sharp"])
    assert HIDEDataset(tmp_path, "test", subset="long-shot").names == [
        "test-long-shot/50fromGOPR1096",
        "test-long-shot/5fromGOPR1096",
    ]
    assert HIDEDataset(tmp_path, "test", subset="close-ups").names == ["test-close-ups/3fromGOPR0882"]


def test_hide_errors(tmp_path):
    make_hide(tmp_path)
    (tmp_path / "GT" / "5fromGOPR1096.png").unlink()
    with pytest.raises(DatasetError) as excinfo:
        HIDEDataset(tmp_path, "test")
    assert "1 problem(s): test/test-long-shot/5fromGOPR1096.png has no partner in GT/" in error_message(
        excinfo
    )
    HIDEDataset(tmp_path, "train")  # the other split is unaffected
    with pytest.raises(DatasetError, match="only for split='test'"):
        HIDEDataset(tmp_path, "train", subset="close-ups")
    with pytest.raises(DatasetError, match="subset='far'"):
        HIDEDataset(tmp_path, "test", subset="far")


# --- RealBlur ------------------------------------------------------------------------------------

REALBLUR_FOLDERS = {
    "J": "RealBlur-J_ECC_IMCORR_centroid_itensity_ref",
    "R": "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref",
}


def make_realblur(root: Path) -> dict:
    """Scenes and list files in the published format: '<gt path> <blur path> ' per line."""
    expected = {}
    seed = 0
    for variant, folder in REALBLUR_FOLDERS.items():
        for split, scenes in {"train": ["scene001", "scene003"], "test": ["scene230"]}.items():
            lines = []
            for scene in scenes:
                for index in (7, 2):
                    gt = f"{folder}/{scene}/gt/gt_{index}.png"
                    blur = f"{folder}/{scene}/blur/blur_{index}.png"
                    seed += 2
                    expected[f"{variant}/{scene}/{index}/sharp"] = write_png(root / gt, seed)
                    expected[f"{variant}/{scene}/{index}/blur"] = write_png(root / blur, seed + 1)
                    lines.append(f"{gt} {blur} \n")
            (root / f"RealBlur_{variant}_{split}_list.txt").write_text("".join(lines))
    return expected


def test_realblur_layout_gt_column_first(tmp_path):
    expected = make_realblur(tmp_path)
    train = RealBlurDataset(tmp_path, "J", "train")
    assert train.names == ["scene001/7", "scene001/2", "scene003/7", "scene003/2"]  # list order
    sample = train[1]
    torch.testing.assert_close(sample["sharp"], expected["J/scene001/2/sharp"])
    torch.testing.assert_close(sample["blur"], expected["J/scene001/2/blur"])
    test_r = RealBlurDataset(tmp_path, variant="R", split="test")
    assert test_r.names == ["scene230/7", "scene230/2"]
    torch.testing.assert_close(test_r[0]["blur"], expected["R/scene230/7/blur"])


def test_realblur_custom_list_file_and_errors(tmp_path):
    make_realblur(tmp_path)
    folder = REALBLUR_FOLDERS["J"]
    custom = tmp_path / "lists" / "mine.txt"
    custom.parent.mkdir()
    custom.write_text(
        f"{folder}/scene230/gt/gt_2.png {folder}/scene230/blur/blur_2.png\n"
        "\n"
        f"{folder}/scene230/gt/gt_9.png {folder}/scene230/blur/blur_9.png\n"
        "only_one_column.png\n"
    )
    with pytest.raises(DatasetError) as excinfo:
        RealBlurDataset(tmp_path, "J", "test", list_file=custom)
    message = error_message(excinfo)
    assert "2 problem(s)" in message
    assert (
        f"mine.txt line 3: missing {folder}/scene230/blur/blur_9.png and {folder}/scene230/gt/gt_9.png"
        in message
    )
    assert "mine.txt line 4: expected '<gt path> <blur path>'" in message
    custom.write_text(f"{folder}/scene230/gt/gt_2.png {folder}/scene230/blur/blur_2.png\n")
    assert RealBlurDataset(tmp_path, "J", "test", list_file=custom).names == ["scene230/2"]
    (tmp_path / "RealBlur_R_train_list.txt").unlink()
    with pytest.raises(DatasetError, match="missing list file .*RealBlur_R_train_list.txt"):
        RealBlurDataset(tmp_path, "R", "train")
    with pytest.raises(DatasetError, match="variant='K'"):
        RealBlurDataset(tmp_path, "K")


# --- ReLoBlur ------------------------------------------------------------------------------------


def make_reloblur(root: Path, mask_root: Path | None = None) -> dict:
    """LBAG's tree: dataset/<split>/<scene>/<seq>/<n>_{blur,sharp}.png and masks/<split>/.../<n>.png."""
    mask_root = mask_root or root / "masks"
    expected = {}
    for split, items in {"train": ["s01/00/00", "s01/00/01", "s02/03/00"], "test": ["scene1/00/00"]}.items():
        for seed, item in enumerate(items):
            expected[f"{item}/blur"] = write_png(root / "dataset" / split / f"{item}_blur.png", seed)
            expected[f"{item}/sharp"] = write_png(root / "dataset" / split / f"{item}_sharp.png", seed + 50)
            write_mask(mask_root / split / f"{item}.png", half_mask())
    return expected


def test_reloblur_layout_with_masks(tmp_path):
    expected = make_reloblur(tmp_path)
    train = ReLoBlurDataset(tmp_path, "train")
    assert train.names == ["s01/00/00", "s01/00/01", "s02/03/00"]
    sample = train[2]
    torch.testing.assert_close(sample["blur"], expected["s02/03/00/blur"])
    torch.testing.assert_close(sample["sharp"], expected["s02/03/00/sharp"])
    assert torch.equal(sample["mask"], expected_half_mask())
    assert ReLoBlurDataset(tmp_path, "test").names == ["scene1/00/00"]


def test_reloblur_mask_root_and_without_masks(tmp_path):
    make_reloblur(tmp_path / "data", mask_root=tmp_path / "lmdvit_masks")
    with pytest.raises(DatasetError, match="missing mask folder"):
        ReLoBlurDataset(tmp_path / "data", "train")
    dataset = ReLoBlurDataset(tmp_path / "data", "train", mask_root=tmp_path / "lmdvit_masks")
    assert torch.equal(dataset[0]["mask"], expected_half_mask())
    unmasked = ReLoBlurDataset(tmp_path / "data", "train", with_masks=False)
    assert len(unmasked) == 3 and "mask" not in unmasked[0]


def test_reloblur_errors(tmp_path):
    make_reloblur(tmp_path)
    (tmp_path / "masks" / "train" / "s01" / "00" / "01.png").unlink()
    (tmp_path / "dataset" / "train" / "s02" / "03" / "00_sharp.png").unlink()
    write_png(tmp_path / "dataset" / "train" / "s02" / "03" / "05_sharp.png", 0)
    with pytest.raises(DatasetError) as excinfo:
        ReLoBlurDataset(tmp_path, "train")
    message = error_message(excinfo)
    assert "reloblur dataset at" in message and "3 problem(s)" in message
    assert "s02/03/00: no 00_sharp image" in message
    assert "s02/03/05: no 05_blur image" in message
    assert "s01/00/01: no mask in" in message
    with pytest.raises(DatasetError, match="missing folder dataset/train/"):
        ReLoBlurDataset(tmp_path / "dataset", "train")


# --- factory -------------------------------------------------------------------------------------


def test_open_dataset_dispatches_every_layout(tmp_path, paired_root):
    make_gopro(tmp_path / "gopro")
    make_hide(tmp_path / "hide")
    make_realblur(tmp_path / "realblur")
    make_reloblur(tmp_path / "reloblur")
    paired, _ = paired_root
    opened = {
        "paired": open_dataset(paired),
        "gopro": open_dataset(tmp_path / "gopro", layout="gopro", split="test"),
        "hide": open_dataset(tmp_path / "hide", layout="hide", split="test", subset="close-ups"),
        "realblur": open_dataset(tmp_path / "realblur", layout="realblur", variant="R", split="test"),
        "reloblur": open_dataset(tmp_path / "reloblur", layout="reloblur", split="test"),
    }
    assert tuple(opened) == LAYOUTS
    assert [type(d).__name__ for d in opened.values()] == [
        "PairedFolderDataset",
        "GoProDataset",
        "HIDEDataset",
        "RealBlurDataset",
        "ReLoBlurDataset",
    ]
    assert [len(d) for d in opened.values()] == [2, 2, 1, 2, 1]
    with pytest.raises(DatasetError, match="unknown dataset layout 'lmdb'; expected one of paired, gopro"):
        open_dataset(tmp_path, layout="lmdb")


@pytest.mark.skipif(not SHARED_LEVIN.is_dir(), reason="shared Levin et al. 2009 captures not present")
def test_levin_captures_in_the_paired_layout():
    dataset = PairedFolderDataset(SHARED_LEVIN)
    assert len(dataset) == 32
    sample = dataset[0]
    assert sample["blur"].shape == (3, 255, 255) and sample["kernel"].dim() == 3
    assert sample["kernel"].shape[0] == 1 and sample["kernel"].shape[1] == sample["kernel"].shape[2]
