"""`adeblur deblur` and `adeblur models`: naming, formats kept, failures reported and skipped, inputs safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adeblur.cli import EXIT_BAD_INPUT, EXIT_OK, main
from adeblur.engine.checkpoint import save_checkpoint
from adeblur.io import read_image, write_image
from adeblur.models import build_model

TINY = {"width": 8, "encoder_blocks": [1, 1], "middle_blocks": 1, "decoder_blocks": [1, 1]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny m2aenet-lite checkpoint as `adeblur train` writes it, with residual scales that change images."""
    torch.manual_seed(0)
    model = build_model("m2aenet-lite", **TINY)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                parameter.normal_(0, 0.3)
    config = {"model": {"name": "m2aenet-lite", "options": TINY}, "data": {"patch_size": 32}}
    path = tmp_path_factory.mktemp("weights") / "best.safetensors"
    return str(save_checkpoint(path, model_state=model.state_dict(), metadata={"config": config, "step": 1}))


def run(*argv) -> int:
    return main(["deblur", *map(str, argv)])


def smooth(channels: int, height: int = 30, width: int = 41, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(channels, height, width, generator=generator)
    return torch.nn.functional.avg_pool2d(image[None], 3, stride=1, padding=1)[0]


def test_deblur_writes_beside_the_input_and_never_over_it(weights, tmp_path, capsys):
    source = write_image(tmp_path / "photo.jpg", smooth(3))
    before = source.read_bytes()
    assert run(source, "--weights", weights) == EXIT_OK
    result, info = read_image(tmp_path / "photo_deblurred.jpg")
    assert info.format == "JPEG" and result.shape == (3, 30, 41)
    assert "deblurred 1 image" in capsys.readouterr().out
    assert run(source, "--weights", weights, "-o", source) == EXIT_BAD_INPUT  # -o naming the input itself
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert source.read_bytes() == before


@pytest.mark.parametrize(
    ("name", "channels", "bit_depth"),
    [("grey.png", 1, 8), ("grey_alpha.png", 2, 8), ("rgba.png", 4, 8), ("deep.png", 3, 16), ("deep_grey.tif", 1, 16)],
)
def test_channels_alpha_and_bit_depth_are_kept(weights, tmp_path, name, channels, bit_depth):
    image = smooth(channels)
    if channels in (2, 4):
        image[-1] = torch.linspace(0, 1, 41).expand(30, 41)  # an alpha ramp
    source = write_image(tmp_path / name, image, bit_depth=bit_depth)
    original, _ = read_image(source)
    assert run(source, "--weights", weights, "-o", tmp_path / "out") == EXIT_OK
    stem, ext = name.rsplit(".", 1)
    result, info = read_image(tmp_path / "out" / f"{stem}_deblurred.{ext}")
    assert (info.channels, info.bit_depth, info.height, info.width) == (channels, bit_depth, 30, 41)
    if channels in (2, 4):
        assert torch.equal(result[-1], original[-1])  # alpha passed through
    assert (result[: 3 if channels >= 3 else 1] - original[: 3 if channels >= 3 else 1]).abs().max() > 1e-3  # deblurred


def test_a_bad_file_is_skipped_reported_and_leaves_nothing(weights, tmp_path, capsys):
    folder = tmp_path / "in"
    write_image(folder / "a.png", smooth(3))
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_image(folder / "c.png", smooth(3, seed=1))
    assert run(folder, "--weights", weights) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "1 of 3 inputs failed" in err and "b.png" in err and "a.png" not in err
    assert sorted(path.name for path in folder.iterdir()) == ["a.png", "a_deblurred.png", "b.png", "c.png", "c_deblurred.png"]


def test_missing_inputs_and_globs(weights, tmp_path, capsys):
    write_image(tmp_path / "x1.png", smooth(3))
    write_image(tmp_path / "x2.bmp", smooth(3))
    (tmp_path / "notes.txt").write_text("not an image")
    assert run(tmp_path / "x*", tmp_path / "nope.png", "--weights", weights) == EXIT_BAD_INPUT
    assert "no such file or folder" in capsys.readouterr().err
    assert (tmp_path / "x1_deblurred.png").is_file() and (tmp_path / "x2_deblurred.bmp").is_file()


def test_output_file_or_folder(weights, tmp_path, capsys):
    first = write_image(tmp_path / "first.png", smooth(3))
    second = write_image(tmp_path / "second.jpg", smooth(3, seed=2))
    assert run(first, "--weights", weights, "-o", tmp_path / "result.tif") == EXIT_OK
    assert read_image(tmp_path / "result.tif")[1].format == "TIFF"  # the extension picks the format
    assert run(first, second, "--weights", weights, "-o", tmp_path / "many") == EXIT_OK
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["first_deblurred.png", "second_deblurred.jpg"]
    capsys.readouterr()
    assert run(first, second, "--weights", weights, "-o", tmp_path / "one.png") == EXIT_BAD_INPUT
    assert "pass a folder" in capsys.readouterr().err
    assert not (tmp_path / "one.png").exists()


def test_tiles_and_maps(weights, tmp_path):
    source = write_image(tmp_path / "big.png", smooth(3, 70, 90))
    assert run(source, "--weights", weights, "--tile", "32", "--overlap", "8", "--save-mask", "--save-motion") == EXIT_OK
    for suffix in ("deblurred", "mask", "motion", "arrows"):
        image, info = read_image(tmp_path / f"big_{suffix}.png")
        assert (info.height, info.width) == (70, 90), suffix


def test_no_weights_says_what_to_pass(tmp_path, capsys):
    source = write_image(tmp_path / "x.png", smooth(3))
    assert run(source, "--model", "m2aenet") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no trained weights ship for 'm2aenet' yet; pass --weights PATH" in err and err.count("\n") == 1
    assert not (tmp_path / "x_deblurred.png").exists()


def test_default_model_works_out_of_the_box(tmp_path):
    source = write_image(tmp_path / "x.png", smooth(3, 40, 48))
    assert run(source) == EXIT_OK
    image, info = read_image(tmp_path / "x_deblurred.png")
    assert (info.height, info.width) == (40, 48)


def test_a_map_the_model_does_not_make_is_an_error_before_any_output(tmp_path, capsys):
    source = write_image(tmp_path / "x.png", smooth(3))
    assert run(source, "--model", "identity", "--save-mask") == EXIT_BAD_INPUT
    assert "--save-mask" in capsys.readouterr().err
    assert not (tmp_path / "x_deblurred.png").exists()
    assert run(source, "--model", "identity") == EXIT_OK
    assert np.array_equal(read_image(tmp_path / "x_deblurred.png")[0].numpy(), read_image(source)[0].numpy())


def test_models_lists_shipped_weights(capsys):
    assert main(["models"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "none (pass --weights)" in out and "not needed" in out
    assert "m2aenet-lite.safetensors" in out and "nafnet-lite.safetensors" in out
