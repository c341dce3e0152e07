"""The profiler: MAC counting against hand-computed counts, blob masks, peak memory, the report, the CLI."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from adeblur.cli import main
from adeblur.engine.profile import (
    count_macs,
    force_blur_mask,
    make_blob_mask,
    measure_peak_memory,
    profile_model,
    resolve_device,
)
from adeblur.errors import ConfigError
from adeblur.models import build_model
from adeblur.ops import DeformConv2d, build_sampling_plan, deform_conv2d_macs

CONTRACT_KEYS = {"model", "size", "params", "macs", "seconds", "peak_mem_bytes"}
COMPARE_KEYS = {"seconds_dense", "seconds_pruned", "max_abs_diff"}


def _conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# --------------------------------------------------------------------------------------------------
# count_macs on hand-made nets


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "dilation", "groups"),
    [
        (3, 8, 3, 1, 1, 1, 1),
        (8, 8, 3, 1, 1, 1, 8),  # depthwise
        (8, 12, (3, 5), 2, 0, 1, 4),
        (6, 4, 3, 1, 2, 2, 2),  # dilated
        (4, 16, 1, 1, 0, 1, 1),
        (4, 8, 2, 2, 0, 1, 1),  # NAFNet's downsampling
    ],
)
def test_conv2d_macs_match_the_formula(cin, cout, kernel, stride, padding, dilation, groups):
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    batch, height, width = 2, 13, 17
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    out_h = _conv_output_size(height, kh, stride, padding, dilation)
    out_w = _conv_output_size(width, kw, stride, padding, dilation)
    expected = batch * cout * out_h * out_w * (cin // groups) * kh * kw
    report = count_macs(conv, torch.rand(batch, cin, height, width))
    assert report.total == expected
    assert report.by_module_type == {"Conv2d": expected}


def test_conv_transpose2d_counts_per_input_element():
    deconv = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2)
    report = count_macs(deconv, torch.rand(1, 6, 5, 7))
    assert report.total == 1 * 6 * 5 * 7 * (4 // 2) * 4 * 4


def test_linear_and_functional_products_count():
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.project = nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N, 16)
            q = self.project(x)  # B * N * 16 * 8
            scores = q @ q.transpose(1, 2)  # B * N * 8 * N
            return torch.einsum("bnm,bmc->bnc", scores, q)  # B * N * N * 8

    batch, tokens = 3, 10
    report = count_macs(Attention(), torch.rand(batch, tokens, 16))
    project = batch * tokens * 16 * 8
    products = 2 * batch * tokens * 8 * tokens
    assert report.total == project + products
    assert report.by_module_type == {"Linear": project, "Attention": products}


def test_elementwise_norm_pool_and_resampling_are_not_counted():
    net = nn.Sequential(
        nn.BatchNorm2d(4), nn.ReLU(), nn.GELU(), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(3),
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.PixelShuffle(2), nn.LayerNorm([1, 12, 12]),
    )  # fmt: skip
    report = count_macs(net.eval(), torch.rand(2, 4, 16, 16))
    assert report.total == 0 and report.by_module_type == {} and report.by_child == {}


def test_breakdown_by_type_and_child_sums_to_the_total():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.weight = nn.Parameter(torch.rand(4, 4, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(self.conv(x), self.weight)  # the functional 1x1 is the block's own work

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.intro = nn.Conv2d(3, 4, 1)
            self.blocks = nn.ModuleList([Block(), Block()])
            self.shared = nn.Linear(10, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.intro(x)
            for block in self.blocks:
                x = block(x)
            x = self.shared(self.shared(x))  # one module, two calls: counted twice
            return x @ x.transpose(-1, -2)  # the model's own work

    pixels = 10 * 10
    intro, conv3, conv1 = pixels * 4 * 3, pixels * 4 * 4 * 9, pixels * 4 * 4
    linear = own = 4 * 10 * 10 * 10
    report = count_macs(Net(), torch.rand(1, 3, 10, 10))
    assert report.total == intro + 2 * (conv3 + conv1) + 2 * linear + own
    assert report.by_module_type == {
        "Conv2d": intro + 2 * conv3, "Block": 2 * conv1, "Linear": 2 * linear, "Net": own,
    }  # fmt: skip
    assert report.by_child == {
        "intro": intro, "blocks.0": conv3 + conv1, "blocks.1": conv3 + conv1, "shared": 2 * linear, "(model)": own,
    }  # fmt: skip
    assert sum(report.by_module_type.values()) == sum(report.by_child.values()) == report.total


class _GatherConv(nn.Module):
    """A depthwise 3x3 conv written as gathers and element-wise products (invisible to the aten counter)
    that reports its MACs through the ``macs_of_last_call`` protocol; its child 1x1 is replaced by it."""

    def __init__(self, channels: int, report: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels, 1, 3, 3))
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.report = report
        self.macs_of_last_call: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        columns = F.unfold(x, 3, padding=1).view(batch, channels, 9, height, width)
        x = (columns * self.weight.view(1, channels, 9, 1, 1)).sum(2)
        if self.report:
            pixels = batch * height * width
            self.macs_of_last_call = pixels * channels * 9 + pixels * channels * channels
        return self.pointwise(x)


def test_modules_reporting_their_macs_replace_what_was_seen_inside():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), _GatherConv(4, report=True))
    pixels = 6 * 7
    report = count_macs(net, torch.rand(1, 3, 6, 7))
    assert report.total == pixels * 4 * 3 + pixels * 4 * 9 + pixels * 4 * 4
    assert report.by_module_type == {"Conv2d": pixels * 4 * 3, "_GatherConv": pixels * 4 * 9 + pixels * 4 * 4}
    # Without a report of this call only the 1x1 child is visible (the previous call's count is not reused).
    net[1].report = False
    assert count_macs(net, torch.rand(1, 3, 6, 7)).total == pixels * 4 * 3 + pixels * 4 * 4


def test_custom_counters_by_module_class():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), _GatherConv(4, report=False))
    report = count_macs(net, torch.rand(1, 3, 6, 7), custom_counters={_GatherConv: lambda m, a, k, out: 1000})
    assert report.total == 6 * 7 * 4 * 3 + 1000
    assert report.by_child == {"0": 6 * 7 * 4 * 3, "1": 1000}


def test_deform_conv2d_module_counted_by_its_macs_function():
    layer = DeformConv2d(8, 8, 3, padding=1, groups=8)
    x, offset = torch.rand(2, 8, 6, 5), torch.randn(2, 18, 6, 5)
    assert count_macs(layer, (x, offset)).total == deform_conv2d_macs(8, 8, 3, 2 * 6 * 5, groups=8)
    pixel_index = torch.tensor([0, 7, 31, 59])
    plan = build_sampling_plan(offset, (6, 5), 3, padding=1, pixel_index=pixel_index)

    class Planned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x, plan=plan, background=x)

    assert count_macs(Planned(), x).total == deform_conv2d_macs(8, 8, 3, 4, groups=8)


def test_count_macs_leaves_no_hooks_behind():
    net = nn.Sequential(nn.Conv2d(3, 4, 1))
    count_macs(net, torch.rand(1, 3, 4, 4))
    assert not net._forward_hooks and not net._forward_pre_hooks
    assert not net[0]._forward_hooks and not net[0]._forward_pre_hooks


def test_nafnet_is_about_16_g_macs_at_256():
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        model = build_model("nafnet").eval()
        report = count_macs(model, torch.empty(1, 3, 256, 256))
    assert report.total == pytest.approx(16e9, rel=0.01)  # DESIGN.md: ~16 G (NAFNet's paper: 16 G)
    assert set(report.by_module_type) == {"Conv2d"}


# --------------------------------------------------------------------------------------------------
# Blob masks


@pytest.mark.parametrize(
    ("height", "width", "fraction"), [(64, 64, 0.1), (37, 101, 0.02), (128, 96, 0.5), (20, 30, 0.9)]
)
def test_blob_mask_covers_the_fraction_with_a_few_compact_blobs(height, width, fraction):
    mask = make_blob_mask(height, width, fraction, generator=3, num_blobs=3)
    assert mask.shape == (1, 1, height, width) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert abs(mask.mean().item() - fraction) <= max(0.01 * fraction, 1 / (height * width))
    _, components = ndimage.label(mask[0, 0].numpy(), structure=torch.ones(3, 3).numpy())
    assert 1 <= components <= 3


def test_blob_mask_is_reproducible_and_seed_dependent():
    a = make_blob_mask(48, 48, 0.2, generator=torch.Generator().manual_seed(5))
    b = make_blob_mask(48, 48, 0.2, generator=5)
    c = make_blob_mask(48, 48, 0.2, generator=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_blob_mask_extremes_and_errors():
    assert make_blob_mask(8, 9, 0.0, generator=0).sum() == 0
    assert make_blob_mask(8, 9, 1.0, generator=0).sum() == 72
    with pytest.raises(ConfigError, match="fraction"):
        make_blob_mask(8, 8, 1.5, generator=0)
    with pytest.raises(TypeError):
        make_blob_mask(8, 8, 0.5, generator=0.5)


# --------------------------------------------------------------------------------------------------
# Forcing the blur mask


class _Masked(nn.Module):
    """A toy mask-aware model: doubles the pixels its mask marks; the mask can be forced."""

    size_multiple = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.forced_blur_mask: torch.Tensor | None = None
        self.pruned_inference = True
        self.calls = 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert image.shape[-2] % 8 == 0 and image.shape[-1] % 8 == 0
        mask = self.forced_blur_mask if self.forced_blur_mask is not None else (image[:, :1] > 0.5).float()
        out = self.conv(image)
        if self.pruned_inference:  # the 1x1 again, on the masked pixels only
            index = mask.flatten().nonzero().squeeze(1)
            rows = image.permute(0, 2, 3, 1).reshape(-1, 3)[index]
            flat = out.permute(0, 2, 3, 1).reshape(-1, 3).clone()
            flat[index] += rows @ self.conv.weight.view(3, 3).T + self.conv.bias
            return flat.view(out.shape[0], out.shape[2], out.shape[3], 3).permute(0, 3, 1, 2)
        return out + out * mask


def test_force_blur_mask_sets_and_restores():
    model = _Masked()
    mask = torch.ones(1, 1, 8, 8)
    with pytest.raises(RuntimeError), force_blur_mask(model, mask):
        assert model.forced_blur_mask is mask
        raise RuntimeError("restored even on errors")
    assert model.forced_blur_mask is None
    with pytest.raises(ConfigError, match="no blur mask"):
        with force_blur_mask(nn.Conv2d(3, 3, 1), mask):
            pass


# --------------------------------------------------------------------------------------------------
# Peak memory and the report


@pytest.mark.parametrize("method", ["rss-high-water-mark", "rss-sampled"])
def test_peak_memory_of_a_known_allocation(method):
    size = 64 * 2**20

    def run() -> None:
        block = torch.ones(size // 4)  # 64 MiB, touched
        time.sleep(0.03)  # long enough for the 1 ms sampler
        del block

    try:
        peak, how = measure_peak_memory(run, "cpu", method=method)
    except OSError as error:
        pytest.skip(f"{method} does not work here: {error}")
    assert how == method
    assert size * 0.97 <= peak <= size + 16 * 2**20


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_profile_report_keys_types_and_values():
    model = _Masked()
    report = profile_model(model, size=(10, 13), device="cpu", repeats=3, warmup=1)
    assert CONTRACT_KEYS <= set(report) and not COMPARE_KEYS & set(report)
    assert report["model"] == "_Masked" and report["size"] == [10, 13] and report["input_size"] == [16, 16]
    assert report["params"] == 12
    assert isinstance(report["macs"], int) and isinstance(report["seconds"], float) and report["seconds"] > 0
    assert isinstance(report["peak_mem_bytes"], int) and report["peak_mem_bytes"] >= 0
    assert model.calls == 1 + 1 + 1 + 3 + 1  # count_macs, first output, warm-up, timed, memory
    assert not model.training
    json.dumps(report)


def test_profile_forced_mask_and_dense_comparison():
    model = _Masked()
    report = profile_model(
        model, size=(16, 16), mask_fraction=0.25, compare_dense=True, device="cpu", repeats=1, warmup=0
    )
    assert CONTRACT_KEYS | COMPARE_KEYS <= set(report)
    assert model.forced_blur_mask is None and model.pruned_inference is True  # restored
    pixels = 16 * 16
    assert report["macs_dense"] == pixels * 9
    assert report["macs_pruned"] == report["macs"] == pixels * 9 + round(0.25 * pixels) * 9  # the 1x1 on 25%
    assert report["max_abs_diff"] <= 1e-5
    assert report["mask_fraction"] == 0.25


def test_profile_times_are_medians_after_warm_up():
    class Sleeper(nn.Module):
        def __init__(self, schedule: list[float]) -> None:
            super().__init__()
            self.schedule = schedule

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            time.sleep(self.schedule.pop(0) if self.schedule else 0.0)
            return image

    # count_macs, first output and 2 warm-ups are slow; of the 5 timed runs 2 are slow.
    schedule = [0.2, 0.2, 0.2, 0.2] + [0.01, 0.3, 0.01, 0.3, 0.01]
    report = profile_model(Sleeper(schedule), size=(4, 4), device="cpu", repeats=5, warmup=2)
    assert 0.01 <= report["seconds"] < 0.1


def test_profile_rejects_what_the_model_cannot_do():
    with pytest.raises(ConfigError, match="pruned"):
        profile_model(nn.Conv2d(3, 3, 1), size=(8, 8), compare_dense=True, device="cpu", repeats=1, warmup=0)
    with pytest.raises(ConfigError, match="no blur mask"):
        profile_model(nn.Conv2d(3, 3, 1), size=(8, 8), mask_fraction=0.1, device="cpu", repeats=1, warmup=0)
    with pytest.raises(ConfigError, match="size"):
        profile_model(nn.Conv2d(3, 3, 1), size=(0, 8), device="cpu")


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_profile_json_to_stdout(capsys):
    assert main(["profile", "--model", "nafnet-lite", "--size", "64x64", "--device", "cpu", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert CONTRACT_KEYS <= set(report)
    assert report["model"] == "nafnet-lite" and report["size"] == [64, 64]
    assert report["macs"] > 0 and report["params"] > 1e6


def test_cli_profile_table_and_json_file(tmp_path, capsys):
    target = tmp_path / "out" / "profile.json"
    assert main(["profile", "--model", "identity", "--size", "32x48", "--json", str(target)]) == 0
    assert "parameters" in capsys.readouterr().out
    report = json.loads(target.read_text())
    assert report["params"] == 0 and report["macs"] == 0 and report["size"] == [32, 48]
    assert [p.name for p in target.parent.iterdir()] == ["profile.json"]  # no temporary left


def test_cli_profile_errors_are_one_line(capsys):
    assert main(["profile", "--model", "no-such-model", "--json", "-"]) == 1
    err = capsys.readouterr().err
    assert "no-such-model" in err and err.count("\n") == 1
    assert main(["profile", "--model", "identity", "--compare-dense", "--size", "8x8"]) == 1
    assert "pruned" in capsys.readouterr().err


def test_cli_profile_m2aenet_pruned_equals_dense(capsys):
    argv = ["profile", "--model", "m2aenet-lite", "--size", "64x64", "--mask-fraction", "0.1", "--compare-dense"]
    assert main([*argv, "--device", "cpu", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert CONTRACT_KEYS | COMPARE_KEYS <= set(report)
    # random weights leave no block the identity, so the two paths really compute something (> 0)
    assert 0 < report["max_abs_diff"] <= 1e-4
    assert report["macs_pruned"] < report["macs_dense"]
    assert math.isfinite(report["seconds_pruned"]) and math.isfinite(report["seconds_dense"])


@pytest.mark.parametrize("name", ["nafnet-lite", "m2aenet-no-mask"])
def test_mask_fraction_is_refused_for_models_without_a_blur_mask(name):
    # a silently ignored --mask-fraction would report a forced mask that was never used
    with pytest.raises(ConfigError, match="no blur mask"):
        profile_model(name, size=(32, 32), mask_fraction=0.1, device="cpu", repeats=1, warmup=0)
