"""Tests of adeblur.engine.evaluate on synthetic paired datasets written to tmp_path."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adeblur.data.datasets import open_dataset
from adeblur.data.generate import write_synthetic_dataset
from adeblur.data.synth import dead_leaves, synthesize_global_blur
from adeblur.engine.evaluate import evaluate, evaluate_folder, write_csv
from adeblur.errors import ImageError, KernelError
from adeblur.io import read_image, to_rgb, write_image
from adeblur.metrics import psnr, ssim
from adeblur.models import build_model

# DESIGN.md "Command-line contract", written out here so that the test checks the module against it.
CONTRACT_SUMMARY_KEYS = {
    "psnr", "ssim", "psnr_w", "ssim_w", "input_psnr", "input_ssim", "input_psnr_w", "input_ssim_w",
    "seconds_per_image", "seconds_per_image_io", "count",
}  # fmt: skip
ROW_KEYS = [
    "name", "psnr", "ssim", "psnr_w", "ssim_w", "input_psnr", "input_ssim", "input_psnr_w", "input_ssim_w",
    "seconds", "seconds_io",
]  # fmt: skip
WEIGHTED = ("psnr_w", "ssim_w", "input_psnr_w", "input_ssim_w")


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    """Three 48x48 local-blur pairs with masks."""
    root = tmp_path_factory.mktemp("local")
    list(write_synthetic_dataset(root, kind="local", count=3, size=(48, 48), seed=1))
    return root


@pytest.fixture(scope="module")
def global_data(tmp_path_factory) -> Path:
    """Two 64x64 camera-shake pairs (dead leaves, blurred in the stored values by 7-13 px trajectories) with
    their kernels in kernel/, written as ``adeblur synth`` does."""
    root = tmp_path_factory.mktemp("global")
    sharp = dead_leaves(2, 64, 64, generator=2)
    pair = synthesize_global_blur(sharp, generator=3, length_range=(7, 13), gamma=1.0)
    for index in range(2):
        name = f"pair{index}.png"
        write_image(root / "blur" / name, pair["blur"][index])
        write_image(root / "sharp" / name, pair["sharp"][index])
        kernel = pair["kernel"][index]
        write_image(root / "kernel" / name, kernel / kernel.max(), bit_depth=16)
    return root


def _read_rgb(path: Path) -> torch.Tensor:
    return to_rgb(read_image(path)[0])[0][None]


def test_json_keys_follow_the_contract_and_identity_scores_the_input(local_data):
    results = evaluate_folder(local_data, model="identity", device="cpu")
    assert set(results) == {"summary", "images"}
    assert set(results["summary"]) == CONTRACT_SUMMARY_KEYS
    json.dumps(results, allow_nan=False)  # plain JSON: no tensors, no NaN
    assert results["summary"]["count"] == 3 and len(results["images"]) == 3
    for row in results["images"]:
        assert list(row) == ROW_KEYS
        for key in ("psnr", "ssim", "psnr_w", "ssim_w"):
            assert row[key] == row[f"input_{key}"]
        assert 0 <= row["seconds"] <= row["seconds_io"]
    for key in ("psnr", "ssim", "psnr_w", "ssim_w"):
        assert results["summary"][key] == results["summary"][f"input_{key}"]
        assert results["summary"][key] == pytest.approx(np.mean([row[key] for row in results["images"]]))


def test_scores_match_the_metrics_on_the_files(local_data):
    results = evaluate_folder(local_data, model="unsharp-mask", device="cpu")
    model = build_model("unsharp-mask")
    for row in results["images"]:
        blur = _read_rgb(local_data / "blur" / f"{row['name']}.png")
        sharp = _read_rgb(local_data / "sharp" / f"{row['name']}.png")
        mask = (read_image(local_data / "mask" / f"{row['name']}.png")[0][None] > 0.5).float()
        restored = model(blur).clamp(0, 1)
        assert row["psnr"] == pytest.approx(psnr(restored, sharp).item(), abs=1e-4)
        assert row["ssim"] == pytest.approx(ssim(restored, sharp).item(), abs=1e-5)
        assert row["psnr_w"] == pytest.approx(psnr(restored, sharp, mask=mask).item(), abs=1e-4)
        assert row["ssim_w"] == pytest.approx(ssim(restored, sharp, mask=mask).item(), abs=1e-5)
        assert row["input_psnr_w"] == pytest.approx(psnr(blur, sharp, mask=mask).item(), abs=1e-4)
        assert row["psnr"] != row["input_psnr"]


def test_without_masks_the_weighted_keys_are_null(global_data):
    results = evaluate_folder(global_data, model="identity", device="cpu")
    assert all(results["summary"][key] is None for key in WEIGHTED)
    assert all(row[key] is None for row in results["images"] for key in WEIGHTED)
    assert "null" in json.dumps(results)


def test_an_empty_mask_gives_null_weighted_scores_for_that_image(tmp_path):
    for part in ("blur", "sharp", "mask"):
        (tmp_path / part).mkdir()
    rng = np.random.default_rng(0)
    masks = {"a": np.zeros((24, 24), np.uint8), "b": np.zeros((24, 24), np.uint8)}
    masks["b"][8:16, 8:16] = 255
    for name, mask in masks.items():
        for part in ("blur", "sharp"):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / part / f"{name}.png")
        Image.fromarray(mask).save(tmp_path / "mask" / f"{name}.png")
    results = evaluate_folder(tmp_path, model="identity", device="cpu")
    rows = {row["name"]: row for row in results["images"]}
    assert rows["a"]["psnr_w"] is None and rows["b"]["psnr_w"] is not None
    assert results["summary"]["psnr_w"] == rows["b"]["psnr_w"]  # the mean skips the image without one


def test_csv_round_trip(local_data, tmp_path, capsys):
    results = evaluate_folder(local_data, model="identity", device="cpu")
    target = tmp_path / "out" / "rows.csv"
    write_csv(results["images"], target)
    with open(target, newline="") as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == ROW_KEYS
        read_back = list(reader)
    assert [row["name"] for row in read_back] == [row["name"] for row in results["images"]]
    for written, original in zip(read_back, results["images"], strict=True):
        for key in ROW_KEYS[1:]:
            assert float(written[key]) == original[key]  # repr precision: exact
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    global_rows = [dict(row, psnr_w=None) for row in results["images"]]
    write_csv(global_rows, "-")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join(ROW_KEYS) and len(lines) == 4
    assert lines[1].split(",")[3] == ""  # None -> empty cell


def test_save_writes_restored_images_in_the_input_layout(tmp_path):
    data = tmp_path / "data"
    for part in ("blur", "sharp"):
        (data / part).mkdir(parents=True)
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 65536, (20, 22), dtype=np.uint16)
    Image.fromarray(grey).save(data / "blur" / "g.tif")  # 16-bit grey TIFF
    Image.fromarray(grey).save(data / "sharp" / "g.tif")
    Image.fromarray(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)).save(data / "blur" / "c.png")
    Image.fromarray(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)).save(data / "sharp" / "c.png")
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    results = evaluate_folder(data, model="identity", device="cpu", save_dir=tmp_path / "restored")
    saved = sorted(p.name for p in (tmp_path / "restored").iterdir())
    assert saved == ["c.png", "g.tif"]
    image, info = read_image(tmp_path / "restored" / "g.tif")
    assert (info.channels, info.bit_depth) == (1, 16)
    assert torch.equal(image, read_image(data / "blur" / "g.tif")[0])  # identity: the input, bit for bit
    assert read_image(tmp_path / "restored" / "c.png")[1].channels == 3
    assert all(row["seconds_io"] >= row["seconds"] for row in results["images"])
    with pytest.raises(ImageError, match="refusing to overwrite the input"):
        evaluate_folder(data, model="identity", device="cpu", save_dir=data / "blur")
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def test_kernel_from_the_folder_and_from_a_file(global_data):
    from_folder = evaluate_folder(global_data, model="wiener", device="cpu")["images"]
    kernel_file = sorted((global_data / "kernel").iterdir())[0]
    from_file = evaluate_folder(global_data, model="wiener", device="cpu", kernel=kernel_file)["images"]
    assert from_file[0]["psnr"] == from_folder[0]["psnr"]  # the same kernel for the first image
    assert from_file[1]["psnr"] != from_folder[1]["psnr"]  # the first image's kernel for the second
    assert all(row["psnr"] > row["input_psnr"] + 1 for row in from_folder)  # the true kernels help


def test_classical_methods_improve_psnr_with_the_true_kernel(global_data):
    for name in ("wiener", "richardson-lucy"):
        summary = evaluate_folder(global_data, model=name, device="cpu")["summary"]
        assert summary["psnr"] > summary["input_psnr"] + 1, name
        assert summary["ssim"] > summary["input_ssim"], name


def test_a_missing_kernel_is_a_clear_error(local_data):
    with pytest.raises(KernelError, match=r"image '.*' and 2 more has no blur kernel.*kernel/ folder.*--kernel FILE"):
        evaluate_folder(local_data, model="wiener", device="cpu")

    class Samples(list):  # a dataset without file information: checked per sample
        pass

    samples = Samples([{"blur": torch.rand(3, 16, 16), "sharp": torch.rand(3, 16, 16), "name": "x"}])
    with pytest.raises(KernelError, match="image 'x' has no blur kernel"):
        evaluate(build_model("richardson-lucy"), samples, device="cpu")


def test_progress_and_a_plain_sequence_of_samples(tmp_path):
    generator = torch.Generator().manual_seed(0)
    samples = [
        {"blur": torch.rand(1, 16, 16, generator=generator), "sharp": torch.rand(1, 16, 16, generator=generator),
         "name": f"sub/{index}"}
        for index in range(2)
    ]  # fmt: skip
    calls = []
    results = evaluate(
        build_model("identity"), samples, device="cpu", save_dir=tmp_path,
        progress=lambda done, total, row: calls.append((done, total, row["name"])),
    )  # fmt: skip
    assert calls == [(1, 2, "sub/0"), (2, 2, "sub/1")]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["0.png", "1.png"]
    assert math.isfinite(results["summary"]["psnr"])


def test_dataset_object_and_split_options(local_data):
    dataset = open_dataset(local_data)
    direct = evaluate(build_model("identity"), dataset, device="cpu")
    assert [row["name"] for row in direct["images"]] == dataset.names
    with pytest.raises(Exception, match="has no splits"):
        evaluate_folder(local_data, model="identity", split="test")


def test_cli_evaluate_json_csv_and_table(local_data, tmp_path, capsys):
    from adeblur.cli import main

    json_path, csv_path = tmp_path / "r.json", tmp_path / "r.csv"
    code = main(["evaluate", "--data", str(local_data), "--model", "identity", "--device", "cpu",
                 "--json", str(json_path), "--csv", str(csv_path), "--save", str(tmp_path / "saved")])  # fmt: skip
    assert code == 0
    results = json.loads(json_path.read_text())
    assert set(results["summary"]) == CONTRACT_SUMMARY_KEYS and results["summary"]["count"] == 3
    with open(csv_path, newline="") as file:
        assert csv.DictReader(file).fieldnames == ROW_KEYS
    assert len(list((tmp_path / "saved").iterdir())) == 3
    out = capsys.readouterr().out
    assert "PSNR" in out and "seconds per image" in out
    assert main(["evaluate", "--data", str(local_data), "--model", "identity", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["count"] == 3  # stdout holds the JSON only


def test_cli_evaluate_kernel_option_and_errors(global_data, local_data, tmp_path, capsys):
    from adeblur.cli import main

    kernel = sorted((global_data / "kernel").iterdir())[0]
    assert main(["evaluate", "--data", str(local_data), "--model", "wiener", "--kernel", str(kernel),
                 "--csv", "-"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("name,psnr,")
    assert main(["evaluate", "--data", str(local_data), "--model", "wiener"]) == 1
    assert "no blur kernel" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(local_data), "--model", "identity", "--json", "-", "--csv", "-"]) == 1
    assert "cannot both write to standard output" in capsys.readouterr().err
