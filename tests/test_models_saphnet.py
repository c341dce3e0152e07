"""DMPHN and SAPHNet: patch hierarchy wiring, shapes, the Table 3 switches, maps, gradients, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adeblur.cli import EXIT_OK, main
from adeblur.engine.checkpoint import save_weights
from adeblur.engine.infer import restore
from adeblur.engine.profile import randomise_zero_parameters_
from adeblur.errors import ConfigError
from adeblur.io import read_image, write_image
from adeblur.models import build_model, list_models
from adeblur.models.dmphn import DMPHN, merge_patches, patch_grid, regrid, split_patches
from adeblur.models.saphnet import SAPHNet
from adeblur.ops.attention import EfficientAttention
from adeblur.ops.pixel_filter import PixelDependentFilter, dominant_offset_direction
from adeblur.viz import visualise_maps

TINY = {"widths": (4, 8, 16), "blocks": 1}
TINY_SAPHNET = {"widths": (4, 8), "blocks": (1, 1), "clusters": 2}


def _seeded(builder, seed=0, **options):
    torch.manual_seed(seed)
    return builder(**options)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _randomise_meta_layers(model, seed=1):
    """Zero-initialised PDF meta-layers make V = 1 and offsets 0; give them values so the maps vary."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, PixelDependentFilter) and module.meta is not None:
            with torch.no_grad():
                module.meta.weight.copy_(0.3 * torch.randn(module.meta.weight.shape, generator=generator))
    return model


# --- patches -------------------------------------------------------------------------------------


def test_split_patches_cuts_like_dmphn_slicing():
    x = torch.rand(2, 3, 8, 12)
    quadrants = split_patches(x, patch_grid(4))
    h, w = 4, 6
    expected = [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]  # raster order, batch inside
    assert torch.equal(quadrants, torch.cat(expected))
    halves = split_patches(x, patch_grid(2))
    assert torch.equal(halves, torch.cat([x[..., :h, :], x[..., h:, :]]))
    eighths = split_patches(x, patch_grid(8))  # DMPHN 1-2-4-8: each quadrant cut into top/bottom halves
    assert torch.equal(eighths[6:8], x[..., 2:4, 6:])  # raster patch 3 of the 4 x 2 grid: row 1, column 1


@pytest.mark.parametrize("patches", [1, 2, 4, 8])
def test_split_merge_round_trip(patches):
    x = torch.rand(3, 2, 16, 8)
    grid = patch_grid(patches)
    assert torch.equal(merge_patches(split_patches(x, grid), grid), x)
    assert torch.equal(regrid(split_patches(x, grid), grid, patch_grid(1)), x)


def test_patch_errors():
    with pytest.raises(ValueError, match="power of two"):
        patch_grid(3)
    with pytest.raises(ValueError, match="does not split"):
        split_patches(torch.rand(1, 1, 5, 4), (2, 2))
    with pytest.raises(ValueError, match="levels must be"):
        DMPHN(levels=(1, 4))


# --- DMPHN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels, multiple", [((1, 2, 4), 8), ((1, 2, 4, 8), 16)])
@pytest.mark.parametrize("size", [(16, 16), (17, 23), (5, 3)])
def test_dmphn_shapes(levels, multiple, size):
    model = _seeded(DMPHN, levels=levels, **TINY)
    assert model.size_multiple == multiple
    assert model(torch.rand(2, 3, *size)).shape == (2, 3, *size)


def test_dmphn_matches_the_official_wiring():
    """The 1-2-4 forward written out as DMPHN's published code slices and sums (an independent oracle)."""
    model = _seeded(DMPHN, **TINY).eval()
    image = torch.rand(1, 3, 16, 24)
    enc, dec = model.encoders, model.decoders  # index 0 = level 1 (whole image)
    h, w = 8, 12
    lv2 = [image[..., :h, :], image[..., h:, :]]
    lv3 = [lv2[0][..., :w], lv2[0][..., w:], lv2[1][..., :w], lv2[1][..., w:]]
    f3 = [enc[2](p) for p in lv3]
    f3_top, f3_bot = torch.cat(f3[:2], 3), torch.cat(f3[2:], 3)
    f3_all = torch.cat((f3_top, f3_bot), 2)
    r3_top, r3_bot = dec[2](f3_top), dec[2](f3_bot)
    f2 = torch.cat((enc[1](lv2[0] + r3_top), enc[1](lv2[1] + r3_bot)), 2) + f3_all
    r2 = dec[1](f2)
    f1 = enc[0](image + r2) + f2
    expected = image + dec[0](f1)
    assert torch.allclose(model(image), expected, atol=1e-6)


def test_dmphn_1248_matches_the_official_wiring():
    """DMPHN_1_2_4_8 written out as the published code slices and sums: 8 patches = each quadrant cut into
    top/bottom halves; level 4's decoder runs on quadrants (the level-3 grid), level 3's on halves."""
    model = _seeded(DMPHN, levels=(1, 2, 4, 8), **TINY).eval()
    image = torch.rand(1, 3, 16, 32)
    enc, dec = model.encoders, model.decoders
    h, w = 8, 16
    lv2 = [image[..., :h, :], image[..., h:, :]]
    lv3 = [lv2[0][..., :w], lv2[0][..., w:], lv2[1][..., :w], lv2[1][..., w:]]
    lv4 = [half for quadrant in lv3 for half in (quadrant[..., : h // 2, :], quadrant[..., h // 2 :, :])]
    f4 = [enc[3](p) for p in lv4]
    f4_quadrants = [torch.cat(f4[2 * q : 2 * q + 2], 2) for q in range(4)]  # top-left, top-right, bottom-...
    f4_top = torch.cat(f4_quadrants[:2], 3)
    f4_bot = torch.cat(f4_quadrants[2:], 3)
    r4 = [dec[3](f) for f in f4_quadrants]
    f3 = [enc[2](p + r) for p, r in zip(lv3, r4)]
    f3_top = torch.cat(f3[:2], 3) + f4_top
    f3_bot = torch.cat(f3[2:], 3) + f4_bot
    r3_top, r3_bot = dec[2](f3_top), dec[2](f3_bot)
    f2 = torch.cat((enc[1](lv2[0] + r3_top), enc[1](lv2[1] + r3_bot)), 2) + torch.cat((f3_top, f3_bot), 2)
    r2 = dec[1](f2)
    f1 = enc[0](image + r2) + f2
    expected = image + dec[0](f1)
    assert torch.allclose(model(image), expected, atol=1e-6)


def test_dmphn_with_zeroed_lower_levels_is_its_top_level():
    model = _seeded(DMPHN, **TINY)
    with torch.no_grad():
        for level in (1, 2):
            for parameter in [*model.encoders[level].parameters(), *model.decoders[level].parameters()]:
                parameter.zero_()
    image = torch.rand(2, 3, 16, 16)
    expected = image + model.decoders[0](model.encoders[0](image))
    assert torch.allclose(model(image), expected, atol=1e-6)


def test_dmphn_parameter_counts():
    assert _count(build_model("dmphn")) == 5_424_393
    assert round(_count(build_model("dmphn-1248")) / 1e6, 1) == 7.2  # the DMPHN paper: 7.2 M for 1-2-4-8


# --- SAPHNet -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 8), (17, 23), (3, 5)])
def test_saphnet_shapes(size):
    model = _seeded(SAPHNet, **TINY_SAPHNET)
    assert model.size_multiple == 4
    assert model(torch.rand(2, 3, *size)).shape == (2, 3, *size)
    assert _seeded(SAPHNet, levels=(1, 2, 4, 8), **TINY_SAPHNET).size_multiple == 8


def _pdfs(model):
    return [m for m in model.modules() if isinstance(m, PixelDependentFilter)]


def test_default_layout_is_three_content_aware_resblocks_per_encoder_and_decoder_at_128_filters():
    model = SAPHNet()
    for coder in [*model.encoders, *model.decoders]:
        assert [len(stage) for stage in coder.stages] == [0, 0, 3]
        assert all(block.conv1.in_channels == 128 == block.module.filter.in_channels for block in coder.stages[2])
    assert len(_pdfs(model)) == 3 * 2 * 3  # 3 levels x (encoder + decoder) x 3 resblocks
    assert _count(model) == 15_671_582  # docs/saphnet.md
    assert _count(build_model("saphnet")) == 15_671_582
    assert _count(build_model("saphnet-a")) == 14_633_882
    assert _count(SAPHNet(blocks=(2, 2, 3))) == 19_272_674  # the blocks-per-scale reading
    tiny = _seeded(SAPHNet, widths=(4, 8, 16), clusters=2).eval()  # default blocks: maps at 1/4 scale
    with torch.no_grad():
        _, aux = tiny(torch.rand(1, 3, 16, 24), return_aux=True)
    assert aux["scale"] == 4 and aux["fusion_mask"].shape == (1, 1, 4, 6)


def test_switches_remove_their_parameters():
    full = _seeded(SAPHNet, **TINY_SAPHNET)
    taps = 25
    assert all(pdf.meta.out_channels == 3 * taps for pdf in _pdfs(full))  # V + (dy, dx) per tap
    no_offsets = _seeded(SAPHNet, learn_offsets=False, **TINY_SAPHNET)
    assert all(pdf.meta.out_channels == taps and not pdf.learn_offsets for pdf in _pdfs(no_offsets))
    no_kernel = _seeded(SAPHNet, adaptive_kernel=False, **TINY_SAPHNET)
    assert all(pdf.meta.out_channels == 2 * taps for pdf in _pdfs(no_kernel))
    plain = _seeded(SAPHNet, adaptive_kernel=False, learn_offsets=False, **TINY_SAPHNET)
    assert all(pdf.meta is None for pdf in _pdfs(plain))

    def blocks(model, part):
        return [block for coder in getattr(model, part) for stage in coder.stages for block in stage]

    assert all(b.module.self_attention is not None for b in blocks(full, "encoders") + blocks(full, "decoders"))
    assert all(b.module.cross_attention is not None for b in blocks(full, "decoders"))
    assert all(b.module.cross_attention is None for b in blocks(full, "encoders"))  # encoders: SA only
    assert len(full.cross_level) == 2
    no_sa = _seeded(SAPHNet, self_attention=False, **TINY_SAPHNET)
    assert all(b.module.self_attention is None for b in blocks(no_sa, "encoders") + blocks(no_sa, "decoders"))
    assert all(b.module.fusion is None for b in blocks(no_sa, "encoders"))  # PDF alone
    no_ca = _seeded(SAPHNet, cross_attention=False, **TINY_SAPHNET)
    assert all(b.module.cross_attention is None for b in blocks(no_ca, "decoders"))
    assert len(_seeded(SAPHNet, cross_level_attention=False, **TINY_SAPHNET).cross_level) == 0
    none = _seeded(SAPHNet, self_attention=False, cross_attention=False, cross_level_attention=False,
                   adaptive_kernel=False, learn_offsets=False, **TINY_SAPHNET)  # fmt: skip
    assert not any(isinstance(m, EfficientAttention) for m in none.modules())

    assert _count(full) > _count(no_offsets) > _count(plain)
    assert _count(full) - _count(no_offsets) == sum(  # exactly the offset rows of the meta-layers
        2 * taps * (pdf.in_channels * 9 + 1) for pdf in _pdfs(full)
    )


@pytest.mark.parametrize(
    "switch", ["self_attention", "cross_attention", "cross_level_attention", "adaptive_kernel", "learn_offsets"]
)
def test_each_switch_changes_the_output(switch):
    full = _randomise_meta_layers(_seeded(SAPHNet, **TINY_SAPHNET))
    ablated = _seeded(SAPHNet, **{switch: False}, **TINY_SAPHNET)
    state = full.state_dict()
    for name, value in ablated.state_dict().items():  # the ablated model's parameters taken from the full one
        if value.shape != state[name].shape:  # a meta-layer: rows [V (25), offsets (50)]; keep the rows it has
            state[name] = state[name][:25] if switch == "learn_offsets" else state[name][25:]
    ablated.load_state_dict(state, strict=False)
    image = torch.rand(1, 3, 8, 8)
    assert not torch.allclose(full(image), ablated(image), atol=1e-5)


def test_cross_level_attention_replaces_dmphn_sum(monkeypatch):
    with_cla = _seeded(SAPHNet, **TINY_SAPHNET)
    without = _seeded(SAPHNet, cross_level_attention=False, **TINY_SAPHNET)
    without.load_state_dict(with_cla.state_dict(), strict=False)
    for attention in with_cla.cross_level:  # an "attention" passing the lower level through: DMPHN's sum
        monkeypatch.setattr(attention, "forward", lambda x, source, valid=None: source)
    image = torch.rand(2, 3, 8, 12)
    assert torch.allclose(with_cla(image), without(image), atol=1e-6)


def _cat(parts, dim):
    return [[torch.cat(blocks, dim) for blocks in zip(*scales)] for scales in zip(*parts)]


def test_saphnet_matches_the_wiring_written_out():
    """Levels (1, 2, 4) with CA and CLA, slice by slice (as the DMPHN oracle): level 3 encodes quadrants,
    its decoder (and its cross-attention, on the quadrants' encoder outputs put together in pairs) runs
    on halves; level 2 encodes halves, CLA and its decoder run on the whole image; CLA adds an attention
    with maps from this level and attended features from the level below."""
    model = _randomise_meta_layers(_seeded(SAPHNet, **TINY_SAPHNET)).eval()
    image = torch.rand(1, 3, 16, 24)
    enc, dec, cla = model.encoders, model.decoders, model.cross_level
    h, w = 8, 12
    with torch.no_grad():
        lv2 = [image[..., :h, :], image[..., h:, :]]
        lv3 = [lv2[0][..., :w], lv2[0][..., w:], lv2[1][..., :w], lv2[1][..., w:]]
        e3 = [enc[2](p) for p in lv3]  # (features, block outputs per scale)
        f3_top, f3_bot = torch.cat((e3[0][0], e3[1][0]), 3), torch.cat((e3[2][0], e3[3][0]), 3)
        r3_top = dec[2](f3_top, _cat([e3[0][1], e3[1][1]], 3))
        r3_bot = dec[2](f3_bot, _cat([e3[2][1], e3[3][1]], 3))
        e2 = [enc[1](lv2[0] + r3_top), enc[1](lv2[1] + r3_bot)]
        f2 = torch.cat((e2[0][0], e2[1][0]), 2)
        f2 = f2 + cla[1](f2, torch.cat((f3_top, f3_bot), 2))
        r2 = dec[1](f2, _cat([e2[0][1], e2[1][1]], 2))
        f1, outputs1 = enc[0](image + r2)
        expected = image + dec[0](f1 + cla[0](f1, f2), outputs1)
        assert torch.allclose(model(image), expected, atol=1e-6)


@pytest.mark.parametrize("levels", [(1,), (1, 2, 4)])
def test_decoder_cross_attention_attends_to_the_mirrored_encoder_block(levels):
    """Decoder block j <- encoder block 2 - j of its level, re-cut to the patches the decoder runs on."""
    model = _seeded(SAPHNet, widths=(4, 8), blocks=(1, 3), clusters=2, levels=levels)
    encoder_outputs = {level: [] for level in range(len(levels))}
    sources = {level: [] for level in range(len(levels))}
    for level in range(len(levels)):
        for block in model.encoders[level].stages[1]:
            block.register_forward_hook(lambda module, args, output, level=level: encoder_outputs[level].append(output))
        for block in model.decoders[level].stages[1]:
            block.module.cross_attention.register_forward_pre_hook(
                lambda module, args, level=level: sources[level].append(args[1])
            )
    model(torch.rand(2, 3, 16, 8))
    for level in range(len(levels)):
        grid, decode_grid = patch_grid(levels[level]), patch_grid(levels[max(level - 1, 0)])
        assert len(sources[level]) == 3
        for index, source in enumerate(sources[level]):
            expected = merge_patches(encoder_outputs[level][2 - index], grid)  # whole image, then the decoder's patches
            assert torch.equal(source, split_patches(expected, decode_grid))


def test_attentions_ignore_the_padding():
    """Every attention of a padded image gets the valid region of its patches (none without padding)."""
    model = _seeded(SAPHNet, **TINY_SAPHNET)
    calls = []
    for module in model.modules():
        if isinstance(module, EfficientAttention):
            module.register_forward_pre_hook(
                lambda module, args, kwargs: calls.append((args[0], kwargs.get("valid"))), with_kwargs=True
            )
    model(torch.rand(2, 3, 16, 12))  # a multiple of 4: no padding
    assert calls and all(valid is None for _, valid in calls)
    calls.clear()
    model(torch.rand(2, 3, 14, 9))  # padded to 16 x 12: 1/1 and 1/2 scales keep 14 x 9 and 7 x 5 pixels
    assert len(calls) == 3 * (2 + 2 * 2) + 2  # per level: 2 encoder blocks (SA), 2 decoder blocks (SA, CA); 2 CLA
    expected = {(16, 12): torch.zeros(16, 12, dtype=torch.bool), (8, 6): torch.zeros(8, 6, dtype=torch.bool)}
    expected[16, 12][:14, :9] = True  # full scale: the image's own 14 x 9 pixels
    expected[8, 6][:7, :5] = True  # 1/2 scale: ceil(14 / 2) x ceil(9 / 2)
    for x, valid in calls:
        assert valid.shape == (x.shape[0], 1, *x.shape[2:]) and valid.dtype == torch.bool
        if x.shape[0] == 2:  # a whole image (the top level, and the decoder of the 2-patch level): exactly
            assert torch.equal(valid, expected[tuple(x.shape[2:])].expand_as(valid))
        else:  # patches: as many valid pixels as the whole image has at that scale
            rows, columns = patch_grid(x.shape[0] // 2)
            whole = expected[x.shape[2] * rows, x.shape[3] * columns]
            assert valid.sum() == 2 * whole.sum()


def test_aux_maps_and_extra_maps():
    model = _randomise_meta_layers(_seeded(SAPHNet, **TINY_SAPHNET)).eval()
    offsets_seen = []
    first = model.encoders[0].stages[0][0].module.filter
    first.register_forward_hook(lambda module, args, output: offsets_seen.append(output))
    image = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        restored, aux = model(image, return_aux=True)
        assert torch.equal(restored, model(image))
    assert aux["scale"] == 1
    maps = model.extra_maps(aux)
    assert sorted(maps) == ["attention", "fusion_mask", "offset_direction"]
    assert maps["attention"].shape == maps["fusion_mask"].shape == (2, 1, 8, 12)
    assert torch.allclose(maps["attention"].sum((2, 3)), torch.ones(2, 1))  # a spatial softmax
    assert ((maps["fusion_mask"] > 0) & (maps["fusion_mask"] < 1)).all()
    _, offsets = offsets_seen[0]  # the maps' call asked for the offsets
    assert isinstance(offsets_seen[1], torch.Tensor)  # the plain call did not
    assert torch.allclose(maps["offset_direction"], dominant_offset_direction(offsets))
    assert maps["offset_direction"].abs().max() > 0


def test_plain_forward_skips_the_maps_and_the_unused_re_cuts(monkeypatch):
    import adeblur.models.saphnet as saphnet_module

    model = _randomise_meta_layers(_seeded(SAPHNet, cross_attention=False, **TINY_SAPHNET))
    outputs, regrids = [], []
    for pdf in _pdfs(model):
        pdf.register_forward_hook(lambda module, args, output: outputs.append(output))
    monkeypatch.setattr(saphnet_module, "regrid", lambda *args: regrids.append(args) or regrid(*args))
    model(torch.rand(1, 3, 8, 8))
    assert len(outputs) == 3 * 4 and all(isinstance(output, torch.Tensor) for output in outputs)  # no offsets
    assert len(regrids) == 3  # the features, once per level; no encoder outputs without CA


def test_maps_of_a_coarser_module_are_in_input_pixels():
    model = _randomise_meta_layers(_seeded(SAPHNet, widths=(4, 8), blocks=(0, 1), clusters=2)).eval()
    offsets_seen = []
    model.encoders[0].stages[1][0].module.filter.register_forward_hook(
        lambda module, args, output: offsets_seen.append(output[1])
    )
    with torch.no_grad():
        _, aux = model(torch.rand(1, 3, 10, 13), return_aux=True)  # padded to 12 x 16, maps at 1/2 scale
    assert aux["scale"] == 2
    assert aux["fusion_mask"].shape == (1, 1, 5, 7)  # the image's own region, ceil(10 / 2) x ceil(13 / 2)
    expected = 2 * dominant_offset_direction(offsets_seen[-1])[..., :5, :7]
    assert torch.allclose(aux["offset_direction"], expected)


def test_saphnet_a_has_no_offset_map_and_no_offset_parameters():
    model = build_model("saphnet-a", widths=(4, 8), blocks=(1, 1), clusters=2)
    assert all(not pdf.learn_offsets and pdf.meta.out_channels == 25 for pdf in _pdfs(model))
    _, aux = model(torch.rand(1, 3, 8, 8), return_aux=True)
    assert sorted(model.extra_maps(aux)) == ["attention", "fusion_mask"]


def test_save_maps_pipeline_renders_the_maps():
    model = _randomise_meta_layers(_seeded(SAPHNet, **TINY_SAPHNET))
    image = torch.rand(3, 9, 11)
    restored, maps = restore(model, image, return_maps=True)
    assert restored.shape == image.shape
    assert {name: tuple(value.shape) for name, value in maps.items()} == {
        "attention": (1, 1, 9, 11), "fusion_mask": (1, 1, 9, 11), "offset_direction": (1, 2, 9, 11)
    }  # fmt: skip
    pictures = visualise_maps(image, maps)
    assert sorted(pictures) == ["attention", "fusion_mask", "offset_direction"]
    assert all(picture.shape == (3, 9, 11) for picture in pictures.values())


def test_deblur_cli_save_maps_with_saphnet_lite_weights(tmp_path):
    """`adeblur deblur x.png --model saphnet-lite --weights W --save-maps` writes the three pictures."""
    model = randomise_zero_parameters_(build_model("saphnet-lite"), seed=0)  # random, meta-layers non-zero
    weights = save_weights(tmp_path / "w.safetensors", model.state_dict(), metadata={"model": "saphnet-lite"})
    generator = torch.Generator().manual_seed(0)
    image = F.avg_pool2d(torch.rand(1, 3, 26, 37, generator=generator), 3, stride=1, padding=1)[0]
    source = write_image(tmp_path / "x.png", image)
    argv = ["deblur", source, "--model", "saphnet-lite", "--weights", weights, "--save-maps"]
    assert main([str(arg) for arg in argv]) == EXIT_OK
    for name in ("deblurred", "attention", "fusion_mask", "offset_direction"):
        picture, info = read_image(tmp_path / f"x_{name}.png")
        assert (info.height, info.width) == (26, 37), name
        assert picture.shape[0] == 3 and picture.std() > 0.01, name  # a picture, not a constant
    assert sorted(path.name for path in tmp_path.glob("x_*.png")) == [
        "x_attention.png", "x_deblurred.png", "x_fusion_mask.png", "x_offset_direction.png"
    ]  # fmt: skip


@pytest.mark.parametrize("gate_input", ["pooled", "descriptors"])
def test_gradients_reach_every_parameter(gate_input):
    model = _randomise_meta_layers(_seeded(SAPHNet, gate_input=gate_input, **TINY_SAPHNET))
    image = torch.rand(2, 3, 8, 8)
    F.mse_loss(model(image), torch.rand(2, 3, 8, 8)).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_dmphn_gradients_reach_every_parameter():
    model = _seeded(DMPHN, levels=(1, 2, 4, 8), **TINY)
    F.mse_loss(model(torch.rand(1, 3, 16, 16)), torch.rand(1, 3, 16, 16)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_determinism():
    image = torch.rand(1, 3, 8, 8)
    first = _randomise_meta_layers(_seeded(SAPHNet, seed=3, **TINY_SAPHNET))
    second = _randomise_meta_layers(_seeded(SAPHNet, seed=3, **TINY_SAPHNET))
    assert torch.equal(first(image), second(image))
    assert torch.equal(first(image), first(image))
    assert torch.equal(_seeded(DMPHN, seed=3, **TINY)(image), _seeded(DMPHN, seed=3, **TINY)(image))


# --- registry ------------------------------------------------------------------------------------


def test_registry_entries():
    specs = {spec.name: spec for spec in list_models()}
    for name in ("dmphn", "dmphn-1248", "dmphn-lite", "saphnet", "saphnet-a", "saphnet-lite"):
        assert specs[name].trainable
    assert specs["saphnet-a"].defaults == {"learn_offsets": False}
    assert specs["dmphn-1248"].defaults == {"levels": (1, 2, 4, 8)}
    lite = build_model("saphnet-lite")
    assert lite(torch.rand(1, 3, 9, 9)).shape == (1, 3, 9, 9)
    with pytest.raises(ConfigError, match="blocks"):
        build_model("saphnet", blocks=(1,))
    with pytest.raises(ConfigError, match="gate_input"):
        build_model("saphnet-lite", gate_input="neither")
