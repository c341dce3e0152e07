"""Inference engine: TLC local statistics, padding, tiles and their blending, memory-driven tiling, loading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from safetensors import safe_open

from adeblur.engine.checkpoint import load_weights, save_checkpoint, save_weights
from adeblur.engine.infer import (
    DEFAULT_MODEL,
    DEFAULT_POOL_WINDOW,
    _axis_windows,
    estimate_bytes_per_pixel,
    load_model,
    restore,
    seam_ratio,
    set_pool_window,
    shipped_weights,
    tile_starts,
)
from adeblur.errors import CheckpointError, ConfigError
from adeblur.metrics import psnr
from adeblur.models import build_model
from adeblur.models.blocks import SimplifiedChannelAttention, local_mean
from adeblur.models.m2aenet import MaskPredictor

TINY_M2AENET = {"width": 8, "encoder_blocks": [1, 1], "middle_blocks": 1, "decoder_blocks": [1, 1]}


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero residual scales (they start at 0) so that every block, SCA included, matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model


class LocalConvNet(nn.Module):
    """Three 3x3 convs: every output pixel depends on a 7x7 neighbourhood only (no global pooling)."""

    size_multiple = 4

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(8, 3, 3, padding=1))  # fmt: skip
        self.seen: list[tuple[int, int]] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(image.shape[-2:]))
        return image + 0.1 * self.body(image)


# --------------------------------------------------------------------------------------------------
# TLC


def brute_local_mean(x: torch.Tensor, window: int, border: str) -> torch.Tensor:
    height, width = x.shape[-2:]
    out = torch.empty_like(x, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            bounds = []
            for position, length in ((i, height), (j, width)):
                start = position - window // 2
                if border == "shift":
                    start = min(max(start, 0), max(length - window, 0))
                    bounds.append((start, min(start + window, length)))
                else:
                    bounds.append((max(start, 0), min(start + window, length)))
            (r0, r1), (c0, c1) = bounds
            out[..., i, j] = x[..., r0:r1, c0:c1].double().mean(dim=(-2, -1))
    return out


@pytest.mark.parametrize("border", ["shift", "clip"])
@pytest.mark.parametrize(("height", "width", "window"), [(9, 13, 4), (7, 5, 5), (6, 11, 20), (12, 3, 7), (10, 12, 9), (1, 8, 2)])
def test_local_mean_matches_brute_force(border, height, width, window):
    x = torch.rand(2, 3, height, width) * 10 + 5
    expected = brute_local_mean(x, window, border)
    got = local_mean(x, window, border).expand_as(x)
    assert torch.allclose(got.double(), expected, atol=1e-5)


def test_local_mean_stays_accurate_on_large_offset_features():
    x = 1000.0 + torch.rand(1, 2, 256, 512, dtype=torch.float64)
    got = local_mean(x.float(), 48).double()
    expected = local_mean(x, 48)  # float64 reference
    assert (got - expected).abs().max() < 1e-3  # float32 resolution at 1000 is 6e-5


def test_local_mean_rejects_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        local_mean(torch.rand(1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="border"):
        local_mean(torch.rand(1, 1, 4, 4), 2, border="wrap")


def test_channel_attention_without_window_is_the_global_pooling_bit_for_bit():
    sca = SimplifiedChannelAttention(6)
    x = torch.randn(2, 6, 9, 7)
    reference = x * sca[1](F.adaptive_avg_pool2d(x, 1))
    assert torch.equal(sca(x), reference)
    sca.pool_window = 4
    local = sca(x)
    assert torch.allclose(local, x * sca[1](local_mean(x, 4)))
    assert not torch.allclose(local, reference)


def test_mask_predictor_window_covering_the_image_equals_the_global_feature():
    predictor = MaskPredictor(8)
    features = torch.randn(1, 8, 6, 10)
    global_logits = predictor(features)
    predictor.pool_window = 10
    assert torch.allclose(predictor(features), global_logits, atol=1e-6)
    predictor.pool_window = 3
    assert not torch.allclose(predictor(features), global_logits, atol=1e-3)


def test_set_pool_window_converts_to_each_scale_and_off_again():
    model = build_model("m2aenet-lite", **TINY_M2AENET)
    windows = set_pool_window(model, 96)
    assert windows["mask_predictors.encoder2"] == 48  # encoder2 runs at 1/2 of the input
    assert windows["encoders.0.0.sca"] == 96 and windows["middle_blks.0.sca"] == 24
    assert model.encoders[0][0].sca.pool_window == 96
    assert set(set_pool_window(model, None).values()) == {None}
    assert model.mask_predictors["encoder2"].pool_window is None
    with pytest.raises(ConfigError):
        set_pool_window(model, 0)


# --------------------------------------------------------------------------------------------------
# Tiles


@pytest.mark.parametrize(("length", "tile", "overlap"), [(1024, 512, 64), (1000, 256, 32), (257, 256, 0), (96, 128, 16),
                                                         (961, 512, 64), (5000, 640, 64)])  # fmt: skip
def test_tiles_cover_the_axis_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == max(length, size)
    assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))  # shared >= overlap
    windows = _axis_windows(starts, size)
    total = torch.zeros(max(length, size))
    for start, window in zip(starts, windows):
        total[start : start + size] += window
    assert total.min() > 0
    if all(c - a >= size for a, c in zip(starts, starts[2:])):  # no pixel in three tiles: a partition of unity
        assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_tile_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(ConfigError, match="overlap"):
        tile_starts(100, 32, 32)


@pytest.mark.parametrize(("height", "width"), [(37, 50), (64, 64), (1, 5), (17, 3)])
def test_restore_pads_to_the_multiple_and_crops_back(height, width):
    model = LocalConvNet()
    image = torch.rand(3, height, width)
    restored = restore(model, image)
    assert restored.shape == image.shape
    assert all(h % 4 == 0 and w % 4 == 0 for h, w in model.seen)
    # The pad is a mirror image: the crop equals running the model on the reflect-padded image.
    pad_right, pad_bottom = -width % 4, -height % 4
    mirror = pad_bottom < height and pad_right < width  # else too small to mirror: the edge is repeated
    padded = F.pad(image[None], (0, pad_right, 0, pad_bottom), mode="reflect" if mirror else "replicate")
    with torch.no_grad():
        expected = model(padded)[0, :, :height, :width].clamp(0, 1)
    assert torch.allclose(restored, expected, atol=1e-6)


@pytest.mark.parametrize(("tile", "overlap"), [(32, 16), (24, 12), (48, 32)])
def test_tiles_equal_the_whole_image_for_a_local_model(tile, overlap):
    model = LocalConvNet()
    image = torch.rand(1, 3, 70, 93)
    whole = restore(model, image)
    progress = []
    calls = len(model.seen)
    tiled = restore(model, image, tile=tile, overlap=overlap, progress=lambda done, total: progress.append((done, total)))
    assert progress[-1][0] == progress[-1][1] > 4  # really tiled
    assert all(shape == (tile, tile) for shape in model.seen[calls:])
    assert (tiled - whole).abs().max() < 1e-5


def test_small_memory_budget_tiles_automatically():
    model = LocalConvNet()
    image = torch.rand(3, 96, 80)
    totals = []
    restore(model, image, memory_budget=2**40, progress=lambda done, total: totals.append(total))
    assert totals[-1] == 1
    restored = restore(model, image, overlap=4, memory_budget=1, progress=lambda done, total: totals.append(total))
    assert totals[-1] > 1 and restored.shape == image.shape
    assert estimate_bytes_per_pixel(model) > 0


def test_seam_ratio_sees_errors_at_tile_borders():
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(3, 200, 240, generator=generator)
    noisy = reference + 0.01 * torch.randn(reference.shape, generator=generator)
    assert 0.9 < seam_ratio(noisy, reference, tile=96, overlap=16) < 1.1
    seamed = noisy.clone()
    starts = tile_starts(240, 96, 16)
    for border in starts[1:] + [start + 96 for start in starts[:-1]]:
        seamed[..., border - 4 : border + 4] += 0.05
    assert seam_ratio(seamed, reference, tile=96, overlap=16) > 2


def test_tlc_makes_tiles_agree_better():
    model = randomise_(build_model("nafnet-lite", width=8, encoder_blocks=(1, 1, 1), decoder_blocks=(1, 1, 1)))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SimplifiedChannelAttention):
                module[1].weight.mul_(4)  # make the pooled statistics matter
    texture = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    ramp = torch.linspace(0, 1, 160).view(1, 1, 1, 160)
    image = 0.7 * ramp + 0.3 * F.avg_pool2d(texture, 5, stride=1, padding=2)  # content that varies over the image
    agreement = {}
    for window in (None, 48):
        set_pool_window(model, window)
        whole = restore(model, image)
        tiled = restore(model, image, tile=64, overlap=16)
        agreement[window] = psnr(tiled, whole).item()
    assert agreement[48] > agreement[None] + 3


def test_restore_returns_stitched_maps_for_m2aenet():
    model = randomise_(build_model("m2aenet-lite", **TINY_M2AENET)).eval()
    image = torch.rand(3, 45, 70)
    restored, maps = restore(model, image, return_maps=True)
    assert restored.shape == image.shape
    assert maps["blur_mask"].shape == (1, 1, 45, 70) and maps["displacement_end"].shape == (1, 2, 45, 70)
    _, tiled = restore(model, image, tile=32, overlap=8, return_maps=True)
    assert set(tiled) == set(maps) == {"blur_mask", "blur_probability", "displacement_start", "displacement_end"}
    assert 0 <= tiled["blur_mask"].min() and tiled["blur_mask"].max() <= 1
    # Displacements are in input pixels: the stage's (1/2 scale) values doubled.
    with torch.no_grad():
        _, aux = model(F.pad(image[None], (0, 2, 0, 3), mode="reflect"), return_aux=True)
    stage = aux["encoder2"]["displacement_start"]
    assert torch.allclose(maps["displacement_start"][..., 1::2, 1::2].abs().mean(), 2 * stage[..., :22, :35].abs().mean(), rtol=0.1)


def test_restore_keeps_dtype_and_the_model_mode():
    model = LocalConvNet().double().train()
    image = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    restored = restore(model, image, tile=12, overlap=4)
    assert restored.dtype == torch.float64 and restored.shape == image.shape and model.training


def test_kernel_models_get_the_kernel_and_are_not_tiled():
    class KernelModel(nn.Module):
        needs_kernel = True
        tileable = False

        def forward(self, image, kernel=None):
            assert kernel is not None and kernel.shape == (1, 3, 3)
            return image

    image = torch.rand(3, 10, 10)
    assert torch.equal(restore(KernelModel(), image, kernel=torch.ones(1, 3, 3) / 9), image)
    with pytest.raises(ConfigError, match="kernel"):
        restore(KernelModel(), image)
    with pytest.raises(ConfigError, match="tiled"):
        restore(KernelModel(), image, tile=8, kernel=torch.ones(1, 3, 3))
    # Models without needs_kernel never see one.
    assert restore(LocalConvNet(), image, kernel=torch.ones(1, 3, 3)).shape == image.shape


# --------------------------------------------------------------------------------------------------
# Loading


def test_no_shipped_weights_is_a_clear_error():
    assert shipped_weights("m2aenet") is None
    with pytest.raises(ConfigError) as error:
        load_model("m2aenet", device="cpu")
    assert str(error.value) == (
        "no trained weights ship for 'm2aenet' yet; pass --weights PATH (a checkpoint or weights file from "
        "`adeblur train`)"
    )
    assert not load_model("identity", device="cpu").training


@pytest.mark.parametrize("name", ["m2aenet-lite", "nafnet-lite"])
def test_shipped_lite_weights_load_and_restore_on_cpu(name):
    path = shipped_weights(name)
    assert path is not None and path.parent.name == "weights"
    state_dict, metadata = load_weights(path)
    with safe_open(path, "pt") as file:  # stored as float16, loaded as float32
        assert {file.get_slice(key).get_dtype() for key in file.keys() if "weight" in key} == {"F16"}
    assert metadata["model"] == name and metadata["training"]["step"] > 0
    model = load_model(name, device="cpu")
    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        restored = model(image)
    assert restored.shape == image.shape and torch.isfinite(restored).all()


def test_shipped_weights_fit_the_size_limit_and_the_default_model_has_them():
    folder = shipped_weights(DEFAULT_MODEL).parent
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) <= 20_000_000
    assert load_model(device="cpu").__class__.__name__ == "M2AENet"


def test_load_model_reads_a_training_checkpoint(tmp_path):
    trained = randomise_(build_model("m2aenet-lite", **TINY_M2AENET))
    config = {"model": {"name": "m2aenet-lite", "options": TINY_M2AENET}, "data": {"patch_size": 64}}
    path = save_checkpoint(tmp_path / "best.safetensors", model_state=trained.state_dict(),
                           metadata={"config": config, "step": 3})  # fmt: skip
    model = load_model(weights=path, device="cpu")
    assert not model.training
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.encoders[0][0].sca.pool_window == 96  # TLC: 1.5 x the training patch of 64
    assert model.mask_predictors["encoder2"].pool_window == 48
    assert load_model("m2aenet-lite", path, "cpu", pool_window=None).mask_predictors["encoder2"].pool_window is None
    with pytest.raises(ConfigError, match="for model 'm2aenet-lite', not 'nafnet'"):
        load_model("nafnet", path, "cpu")
    with pytest.raises(ConfigError, match="identity"):
        load_model("identity", path, "cpu")


def test_load_model_reads_a_weights_file_and_checks_the_fit(tmp_path):
    options = {"width": 4, "encoder_blocks": [1], "decoder_blocks": [1]}
    trained = build_model("nafnet-lite", **options)
    path = save_weights(tmp_path / "w.safetensors", trained.state_dict(), metadata={"model": "nafnet-lite", "options": options})
    model = load_model(weights=path, device="cpu")
    assert model.size_multiple == 2 and model.encoders[0][0].sca.pool_window == DEFAULT_POOL_WINDOW
    bare = save_weights(tmp_path / "bare.safetensors", trained.state_dict())  # no metadata: default model
    with pytest.raises(CheckpointError, match="do not fit model 'm2aenet-lite'"):
        load_model(weights=bare, device="cpu")
    assert math.isclose(load_model("nafnet-lite", path, "cpu", pool_window=100).encoders[0][0].sca.pool_window, 100)
