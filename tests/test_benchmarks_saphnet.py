"""benchmarks/bench_saphnet.py and benchmarks/bench_pdf_direction.py: angle conventions, axial means, end to end."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from adeblur.data.synth import linear_kernel
from adeblur.engine.checkpoint import save_weights
from adeblur.engine.profile import count_macs, randomise_zero_parameters_
from adeblur.models import build_model
from adeblur.models.saphnet import SAPHNet
from adeblur.ops import PixelDependentFilter

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_pdf = _load("bench_pdf_direction")
bench_saphnet = _load("bench_saphnet")


def _axial_error(estimate, reference):
    return abs((estimate - reference + 90.0) % 180.0 - 90.0)


# --- angle conventions ---------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 90.0, 120.0, 135.0, 170.0])
def test_offsets_along_a_linear_psf_give_the_psf_angle(angle):
    """Taps at the pixels of a linear_kernel line (offsets = their (dy, dx) from the centre) -> its angle."""
    kernel = linear_kernel(15, angle, dtype=torch.float64)[0]
    rows, columns = torch.nonzero(kernel > 0.5 * kernel.max(), as_tuple=True)
    centre = kernel.shape[-1] // 2
    offsets = torch.stack((rows - centre, columns - centre), 1).double().reshape(1, -1, 1, 1)  # (dy, dx) per tap
    degrees, weights = bench_pdf.offset_axes(offsets)
    assert _axial_error(float(degrees), angle) < 2.0
    assert float(weights) > 10  # a long thin spread: a large eigenvalue gap


@pytest.mark.parametrize("angle", [0.0, 45.0, 90.0, 135.0, 160.0])
def test_offsets_along_a_known_line_give_its_angle(angle):
    """Offsets t (cos a, -sin a) in (x, y-down) pixels: the line at a degrees counter-clockwise on screen."""
    t = torch.linspace(-2, 2, 25, dtype=torch.float64)
    radians = math.radians(angle)
    dx, dy = t * math.cos(radians), -t * math.sin(radians)
    offsets = torch.stack((dy, dx), 1).reshape(1, 50, 1, 1)
    degrees, _ = bench_pdf.offset_axes(offsets)
    assert _axial_error(float(degrees), angle) < 1e-3


# --- axial means ---------------------------------------------------------------------------------


def test_axial_mean_wraps_around_180():
    mean, resultant, total = bench_pdf.axial_mean(torch.tensor([175.0, 5.0, 178.0, 2.0]))
    assert _axial_error(mean, 0.0) < 1e-6 and resultant > 0.98 and total == 4
    assert bench_pdf.axial_mean(torch.tensor([0.0, 90.0]))[0] is None  # opposite axes cancel
    assert bench_pdf.axial_mean(torch.tensor([30.0]), torch.tensor([0.0]))[0] is None  # no weight


def test_axial_mean_minimises_the_weighted_squared_sine_distance():
    """Oracle: the doubled-angle mean is the axis m minimising sum w sin^2(a - m), found by brute force."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        angles = torch.rand(7, generator=generator, dtype=torch.float64) * 60 + 150  # spread over 180 -> 30
        weights = torch.rand(7, generator=generator, dtype=torch.float64)
        candidates = torch.arange(0, 180, 0.01, dtype=torch.float64)
        cost = (weights * torch.sin(torch.deg2rad(angles[None] - candidates[:, None])) ** 2).sum(1)
        best = float(candidates[cost.argmin()])
        assert _axial_error(bench_pdf.axial_mean(angles, weights)[0], best) < 0.02


def test_grid_crops():
    photos = [("a", torch.rand(3, 25, 40)), ("b", torch.rand(1, 10, 10)), ("c", torch.rand(3, 5, 5))]
    crops, names = bench_pdf.grid_crops(photos, 5, 10)
    assert crops.shape == (5, 3, 10, 10)
    assert names == ["a@2,10", "b@0,0", "a@2,20", "a@12,10", "a@12,20"]
    assert torch.equal(crops[0], photos[0][1][:, 2:12, 10:20])
    assert torch.equal(crops[1], photos[1][1].expand(3, -1, -1))  # grey -> RGB
    with pytest.raises(Exception, match="only 9 crops"):
        bench_pdf.grid_crops(photos, 10, 10)


# --- the direction check -------------------------------------------------------------------------


def _plant_offsets(model, angle):
    """Every PDF predicts the same offsets at every pixel, along the line at ``angle`` (meta weights 0, biases)."""
    t = torch.linspace(-2, 2, 25)
    radians = math.radians(angle)
    offsets = torch.stack((-t * math.sin(radians), t * math.cos(radians)), 1).reshape(50)  # (dy, dx) per tap
    for module in model.modules():
        if isinstance(module, PixelDependentFilter):
            with torch.no_grad():
                module.meta.weight.zero_()
                module.meta.bias[25:] = torch.atanh(offsets / module.max_displacement)
    return model


def test_direction_check_reads_a_planted_direction_from_every_module():
    model = _plant_offsets(SAPHNet(widths=(4, 8), blocks=(1, 1), clusters=2), 30.0).eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    results = bench_pdf.direction_check(model, images, angles=(0.0, 90.0), length=5)
    assert len(results) == 3 * 2 * 2  # levels x (encoder, decoder) x scales with one block
    for entries in results.values():
        assert [entry["psf_degrees"] for entry in entries] == [0.0, 90.0]
        for entry in entries:
            assert entry["estimated_degrees"] == pytest.approx(30.0, abs=0.01)
            assert entry["resultant_length"] == pytest.approx(1.0)
            assert len(entry["per_image_degrees"]) == 2
    assert bench_pdf.default_module(list(results)) == "encoders.0.stages.0.0.module.filter"


def test_pdf_direction_end_to_end_with_saphnet_lite_weights(tmp_path, capsys):
    pytest.importorskip("skimage")
    model = randomise_zero_parameters_(build_model("saphnet-lite"), seed=0)
    weights = save_weights(tmp_path / "w.safetensors", model.state_dict(), metadata={"model": "saphnet-lite"})
    out = tmp_path / "direction.json"
    argv = ["--weights", str(weights), "--count", "2", "--size", "36", "--device", "cpu", "--json", str(out)]
    assert bench_pdf.main(argv) == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["images"]["count"] == 2 and report["images"]["size"] == 32  # rounded down to size_multiple 8
    assert report["images"]["crops"][0].startswith("astronaut@")
    assert report["module"] == "encoders.0.stages.2.0.module.filter"  # the --save-maps module, 1/4 scale
    assert [entry["psf_degrees"] for entry in report["results"]] == [0.0, 45.0, 90.0, 135.0]
    assert [entry["paper_degrees"] for entry in report["results"]] == [11.0, 50.0, 81.0, 126.0]
    for entry in report["results"]:
        assert 0 <= entry["estimated_degrees"] < 180 and -90 < entry["error_degrees"] <= 90
        assert len(entry["per_image_degrees"]) == 2
    assert len(report["modules"]) == 18


def test_pdf_direction_refuses_a_model_without_learned_offsets(tmp_path):
    model = build_model("saphnet-a", widths=(4, 8, 16), clusters=2)
    weights = save_weights(tmp_path / "a.safetensors", model.state_dict(),
                           metadata={"model": "saphnet-a", "options": {"widths": [4, 8, 16], "clusters": 2}})  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        bench_pdf.main(["--weights", str(weights), "--count", "1", "--size", "16", "--device", "cpu"])
    assert exit_info.value.code == 2


# --- bench_saphnet -------------------------------------------------------------------------------


def test_bench_saphnet_tiny(tmp_path, capsys):
    out = tmp_path / "cost.json"
    argv = ["--size", "32x48", "--repeats", "1", "--warmup", "0", "--device", "cpu",
            "--models", "dmphn-lite,saphnet-lite", "--reference", "nafnet-lite", "--json", str(out)]  # fmt: skip
    assert bench_saphnet.main(argv) == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert list(report["models"]) == ["nafnet-lite", "dmphn-lite", "saphnet-lite"]
    assert report["size"] == [32, 48]
    for name, entry in report["models"].items():
        model = randomise_zero_parameters_(build_model(name), seed=0).eval()
        assert entry["params"] == sum(p.numel() for p in model.parameters())
        assert entry["macs"] == count_macs(model, torch.rand(1, 3, 32, 48)).total
        assert entry["seconds"] > 0 and len(entry["seconds_all"]) == 1
    assert report["models"]["nafnet-lite"]["seconds_over_nafnet-lite"] == 1.0
    saphnet = report["models"]["saphnet-lite"]
    assert saphnet["seconds_over_nafnet-lite"] == saphnet["seconds"] / report["models"]["nafnet-lite"]["seconds"]


def test_bench_saphnet_rejects_a_bad_size():
    with pytest.raises(SystemExit):
        bench_saphnet.main(["--size", "64"])


def test_bench_saphnet_model_options(tmp_path, capsys):
    """``name:key=value`` entries build the model with those options; the entry is the JSON key."""
    assert bench_saphnet.parse_model_spec("saphnet-as-lite:sampling=uniform:budget=0.5") == (
        "saphnet-as-lite", {"sampling": "uniform", "budget": 0.5})  # fmt: skip
    argv = ["--size", "32x32", "--repeats", "1", "--warmup", "0", "--device", "cpu",
            "--models", "dmphn-as-lite", "--reference", "dmphn-as-lite:sampling=uniform"]  # fmt: skip
    assert bench_saphnet.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["models"]) == ["dmphn-as-lite:sampling=uniform", "dmphn-as-lite"]
    uniform = randomise_zero_parameters_(build_model("dmphn-as-lite", sampling="uniform"), seed=0).eval()
    assert report["models"]["dmphn-as-lite:sampling=uniform"]["macs"] == count_macs(uniform, torch.rand(1, 3, 32, 32)).total
    # the policy heads: adaptive costs a little more than its uniform switch at the same K
    assert report["models"]["dmphn-as-lite"]["macs"] > report["models"]["dmphn-as-lite:sampling=uniform"]["macs"]


@pytest.mark.parametrize(
    "entry,message",
    [("nosuchmodel", "unknown model 'nosuchmodel'"), ("dmphn-lite:depth=3", "has no option 'depth'"),
     ("dmphn-lite:levels", "model option must be key=value, got 'levels'")],
)  # fmt: skip
def test_bench_saphnet_rejects_a_bad_model_entry(entry, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_saphnet.main(["--size", "32x32", "--models", entry, "--reference", "dmphn-lite"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error
