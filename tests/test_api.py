"""The Python API: deblur returns what it is given (path, PIL, NumPy, tensor) with dtype, range and channels kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adeblur import api
from adeblur.data.generate import write_synthetic_dataset
from adeblur.engine.checkpoint import save_weights
from adeblur.errors import ConfigError, ImageError
from adeblur.io import read_image, write_image
from adeblur.models import build_model

TINY = {"width": 8, "encoder_blocks": [1, 1], "middle_blocks": 1, "decoder_blocks": [1, 1]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    network = build_model("m2aenet-lite", **TINY)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.endswith(("beta", "gamma")):
                parameter.normal_(0, 0.3)
    return network.eval()


def rng_image(shape, dtype):
    generator = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        return generator.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)
    return generator.random(shape).astype(dtype)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((20, 30), np.uint8), ((20, 30, 1), np.uint8), ((20, 30, 3), np.uint16), ((20, 30, 4), np.uint8),
     ((20, 30, 2), np.float32), ((20, 30, 3), np.float64)],
)  # fmt: skip
def test_numpy_arrays_keep_shape_dtype_range_and_alpha(model, shape, dtype):
    array = rng_image(shape, dtype)
    result = api.deblur(array, model)
    assert result.shape == array.shape and result.dtype == array.dtype
    if len(shape) == 3 and shape[-1] in (2, 4):
        assert np.array_equal(result[..., -1], array[..., -1])
    # The same as deblurring the float tensor (C, H, W) in [0, 1], rounded to the array's levels.
    levels = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    channels_first = torch.from_numpy(array.reshape(*shape[:2], -1).astype(np.float32) / levels).permute(2, 0, 1)
    expected = api.deblur(channels_first, model).permute(1, 2, 0).reshape(shape).double().numpy() * levels
    assert np.abs(result - expected).max() <= (0.5 if levels > 1 else 1e-6)
    assert np.abs(result.astype(np.float64) - array).max() > 0.01 * levels  # it did something


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16", "I", "F", "1", "CMYK"])
def test_pil_images_keep_their_mode(model, mode):
    picture = Image.fromarray(rng_image((24, 20, 3), np.uint8), "RGB").convert(mode) if mode not in ("I;16", "F") else (
        Image.fromarray(rng_image((24, 20), np.uint16)) if mode == "I;16" else Image.fromarray(rng_image((24, 20), np.float32))
    )  # fmt: skip
    result = api.deblur(picture, model)
    assert result.mode == mode and result.size == picture.size


def test_palette_images_come_back_as_rgb(model):
    picture = Image.fromarray(rng_image((16, 16, 3), np.uint8), "RGB").convert("P")
    assert api.deblur(picture, model).mode == "RGB"


def test_tensors_keep_shape_dtype_and_device(model):
    batch = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    result = api.deblur(batch, model)
    assert result.shape == batch.shape and result.dtype == torch.float64 and 0 <= result.min() and result.max() <= 1
    grey = torch.rand(1, 17, 23)
    assert api.deblur(grey, model).shape == (1, 17, 23)
    with pytest.raises(TypeError, match="floating point"):
        api.deblur(torch.zeros(3, 4, 4, dtype=torch.uint8), model)
    with pytest.raises(TypeError, match="deblur takes"):
        api.deblur([1, 2, 3], model)


def test_paths_write_files_and_return_their_paths(model, tmp_path):
    source = write_image(tmp_path / "shot.png", torch.rand(3, 20, 30), bit_depth=16)
    written = api.deblur(source, model)
    assert written == tmp_path / "shot_deblurred.png" and read_image(written)[1].bit_depth == 16
    assert api.deblur(str(source), model, output=tmp_path / "out") == tmp_path / "out" / "shot_deblurred.png"
    assert api.deblur(tmp_path / "out", model) == [tmp_path / "out" / "shot_deblurred_deblurred.png"]
    with pytest.raises(ImageError, match="no such file"):
        api.deblur(tmp_path / "missing.png", model)
    with pytest.raises(TypeError, match="image files"):
        api.deblur(torch.rand(3, 4, 4), model, output=tmp_path / "x.png")


def test_load_by_weights_and_deblur_by_name(tmp_path):
    network = build_model("nafnet-lite", width=4, encoder_blocks=[1], decoder_blocks=[1])
    path = save_weights(tmp_path / "w.safetensors", network.state_dict(), metadata={"model": "nafnet-lite", "options": {"width": 4, "encoder_blocks": [1], "decoder_blocks": [1]}})
    loaded = api.load(weights=path, device="cpu")
    assert loaded.size_multiple == 2
    image = torch.rand(3, 9, 9)
    assert torch.allclose(api.deblur(image, weights=path, device="cpu"), api.deblur(image, loaded))
    with pytest.raises(ConfigError, match="no trained weights ship"):
        api.deblur(image, "m2aenet")
    assert api.deblur(image).shape == image.shape  # the shipped default model


def test_evaluate_scores_a_dataset(tmp_path):
    list(write_synthetic_dataset(tmp_path / "data", kind="local", count=2, size=(32, 32)))
    scores = api.evaluate(tmp_path / "data", model="identity", device="cpu")
    assert scores["summary"]["count"] == 2 and len(scores["images"]) == 2
    assert scores["summary"]["psnr"] == scores["summary"]["input_psnr"]
