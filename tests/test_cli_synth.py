"""`adeblur synth`: the paired layout, determinism, and bad input (clear error, nothing half-written)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adeblur.cli import EXIT_BAD_INPUT, EXIT_OK, main
from adeblur.data import PairedFolderDataset
from adeblur.io import read_image, write_image


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_local_dead_leaves_layout_reads_back_as_paired_dataset(tmp_path):
    out = tmp_path / "local"
    assert main(["synth", "--out", str(out), "--kind", "local", "--count", "3", "--seed", "1", "--size", "40x48"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["blur", "mask", "sharp"]
    data = PairedFolderDataset(out)
    assert len(data) == 3
    sample = data[0]
    assert sample["blur"].shape == (3, 40, 48) and sample["mask"].shape == (1, 40, 48)
    # outside the mask nothing moved: blur equals sharp up to 8-bit rounding
    outside = sample["mask"][0] == 0
    assert outside.any()
    assert (sample["blur"] - sample["sharp"]).abs()[:, outside].max() <= 1.5 / 255


def test_global_blur_from_a_folder_writes_kernels(tmp_path):
    sharp = tmp_path / "sharp_in"
    generator = torch.Generator().manual_seed(0)
    write_image(sharp / "a.png", torch.rand(3, 50, 60, generator=generator))
    write_image(sharp / "b.jpg", torch.rand(1, 40, 30, generator=generator))  # grey: becomes RGB
    out = tmp_path / "global"
    assert main(["synth", "--sharp", str(sharp), "--out", str(out), "--kind", "global", "--count", "3"]) == 0
    assert _files(out) == sorted(
        f"{folder}/{name}.png" for folder in ("blur", "kernel", "sharp") for name in ("a_000000", "b_000001", "a_000002")
    )
    blur, info = read_image(out / "blur" / "b_000001.png")
    assert blur.shape == (3, 40, 30) and info.bit_depth == 8
    kernel, kernel_info = read_image(out / "kernel" / "a_000000.png")
    assert kernel_info.bit_depth == 16 and kernel.max() == 1.0
    assert "kernel" in PairedFolderDataset(out)[0]


def test_same_seed_same_files_different_seed_different(tmp_path):
    args = ["synth", "--kind", "local", "--count", "2", "--size", "32x32"]
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert main([*args, "--out", str(tmp_path / name), "--seed", seed]) == 0
    blur = {name: read_image(tmp_path / name / "blur" / "dead_leaves_000001.png")[0] for name in "abc"}
    assert torch.equal(blur["a"], blur["b"])
    assert not torch.equal(blur["a"], blur["c"])


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        ("nonempty", [], "is not empty"),
        ("nosharp", ["--sharp", "{tmp}/missing"], "is not a folder"),
        ("emptysharp", ["--sharp", "{tmp}/empty"], "holds no images"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, capsys, setup, extra, message):
    out = tmp_path / "out"
    if setup == "nonempty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    argv = ["synth", "--out", str(out), "--kind", "local", "--count", "1"] + [a.format(tmp=tmp_path) for a in extra]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    if setup == "nonempty":
        assert _files(out) == ["keep.txt"]


def test_corrupt_sharp_image_stops_with_only_complete_pairs(tmp_path, capsys):
    sharp = tmp_path / "sharp_in"
    write_image(sharp / "a.png", torch.rand(3, 32, 32))
    (sharp / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    assert main(["synth", "--sharp", str(sharp), "--out", str(out), "--kind", "local", "--count", "2"]) == EXIT_BAD_INPUT
    assert "b.png" in capsys.readouterr().err
    assert _files(out) == ["blur/a_000000.png", "mask/a_000000.png", "sharp/a_000000.png"]


def test_failed_write_removes_the_partial_pair(tmp_path, monkeypatch):
    import adeblur.data.generate as generate

    calls = {"n": 0}
    real_write = generate.write_image

    def flaky_write(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # second pair, second file
            raise OSError("disk full")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(generate, "write_image", flaky_write)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        list(generate.write_synthetic_dataset(out, kind="local", count=3, size=(32, 32)))
    names = {Path(f).name for f in _files(out)}
    assert names == {"dead_leaves_000000.png"}
    assert main(["synth", "--out", str(tmp_path / "ok"), "--kind", "global", "--count", "1", "--size", "32"]) == EXIT_OK
