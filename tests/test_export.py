"""ONNX export: onnxruntime runs the exported graphs at other sizes and batches and matches PyTorch."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adeblur.engine.export import INPUT_NAME, OUTPUT_NAME, ExportError, export_onnx
from adeblur.engine.infer import set_pool_window
from adeblur.models import build_model

HAS_EXPORTER = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))
HAS_ONNXRUNTIME = importlib.util.find_spec("onnxruntime") is not None
needs_exporter = pytest.mark.skipif(
    not HAS_EXPORTER, reason="ONNX export needs the onnx and onnxscript packages (pip install 'adeblur[onnx]')"
)
needs_onnxruntime = pytest.mark.skipif(
    not (HAS_EXPORTER and HAS_ONNXRUNTIME),
    reason="comparing with PyTorch needs onnxruntime, onnx and onnxscript (pip install 'adeblur[onnx]')",
)
EXAMPLE_SIZE = (64, 64)


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter drawn from N(0, 0.1): NAFNet's zero-initialised residual scales would hide the blocks."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def onnx_output(path, image: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: image.numpy()})[0]


# Exports take tens of CPU seconds (symbolic shapes), so the models are small: width 8 and two blocks in
# the deepest encoder stage (the default lite block counts are (1, 1, 1, 8) there; the graph is the same
# kind). m2aenet-lite is exported once with dynamic sizes (its NAFBlocks, padding and crop are nafnet-lite's)
# and checked at two sizes and batches; nafnet-lite, with TLC local statistics as load_model sets them, is
# exported with fixed sizes, once per size (TLC's window arithmetic nearly doubles a dynamic export's time).
SMALL = {"width": 8, "encoder_blocks": (1, 1, 1, 2)}
# the example size; another size (not a multiple of 16) and batch, large enough that the eager deformable
# conv splits the deepest stage's pixels into several chunks (the exported graph must not keep the example's one)
SHAPES = [(1, 3, 64, 64), (2, 3, 200, 296)]


@pytest.fixture(scope="module")
def m2aenet_export(tmp_path_factory):
    """m2aenet-lite with about half its pixels blurred, exported once with dynamic sizes."""
    model = randomised(build_model("m2aenet-lite", **SMALL), seed=1)
    with torch.no_grad():  # centre the blur logits so that about half the pixels are blurred
        _, aux = model(torch.rand(1, 3, *EXAMPLE_SIZE, generator=torch.Generator().manual_seed(2)), return_aux=True)
        model.mask_predictors["encoder4"].classify[-1].bias[0] -= aux["encoder4"]["blur_logit"].median()
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx") / "m2aenet-lite.onnx", example_size=EXAMPLE_SIZE)


def random_image(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))


@needs_onnxruntime
@pytest.mark.parametrize("shape", SHAPES)
def test_m2aenet_dynamic_export_matches_pytorch_at_two_sizes(m2aenet_export, shape):
    model, path = m2aenet_export
    image = random_image(shape)
    model.pruned_inference = True  # the exported dense path equals the pruned path PyTorch runs by default
    with torch.no_grad():
        expected, aux = model(image, return_aux=True)
    blurred = aux["encoder4"]["blur_mask"].mean().item()
    assert 0.0 < blurred < 1.0, "the test image must exercise both the blurred and the sharp branch"
    restored = onnx_output(path, image)
    assert restored.shape == shape
    difference = np.abs(restored - expected.numpy())
    assert difference.max() <= 1e-3
    assert difference.mean() <= 1e-5  # float rounding only: a wrong pixel anywhere shows here


@needs_onnxruntime
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 3, 37, 90)])  # a fixed-size graph per size
def test_nafnet_export_matches_pytorch_at_two_sizes(tmp_path, shape):
    model = randomised(build_model("nafnet-lite", **SMALL), seed=0)
    windows = set_pool_window(model, 24)  # TLC: smaller than both images, so the local means matter
    assert windows["encoders.0.0.sca"] == 24 and windows["middle_blks.0.sca"] == 2
    path = export_onnx(model, tmp_path / "nafnet-lite.onnx", example_size=shape[-2:], dynamic=False)
    image = random_image(shape)
    with torch.no_grad():
        expected = model(image)
    restored = onnx_output(path, image)
    assert restored.shape == shape
    assert np.abs(restored - expected.numpy()).max() <= 1e-3


@needs_exporter
def test_exported_file_names_axes_opset_and_metadata(m2aenet_export):
    import onnx

    model, path = m2aenet_export
    proto = onnx.load(str(path))
    for value, name in ((proto.graph.input[0], INPUT_NAME), (proto.graph.output[0], OUTPUT_NAME)):
        assert value.name == name
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", 3, "height", "width"]
    assert {entry.domain: entry.version for entry in proto.opset_import}[""] == 18
    properties = {prop.key: prop.value for prop in proto.metadata_props}
    assert properties["model_class"] == "M2AENet" and properties["size_multiple"] == "16"
    assert "adeblur_version" in properties and "clamp" in properties["output"]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    # export_onnx put the model back as it found it
    assert model.training is False and model.pruned_inference is True


@needs_exporter
def test_static_export_replaces_the_file_keeps_training_mode_and_writes_metadata(tmp_path):
    import onnx

    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1))
    model.train()
    target = tmp_path / "conv.onnx"
    target.write_bytes(b"old")
    path = export_onnx(
        model, target, example_size=(10, 12), dynamic=False, metadata={"model": "conv", "weights": "w.safetensors"}
    )
    assert path == target and model.training
    proto = onnx.load(str(path))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 10, 12]
    properties = {prop.key: prop.value for prop in proto.metadata_props}
    assert properties["model"] == "conv" and properties["weights"] == "w.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.onnx"]


def test_kernel_models_cannot_export(tmp_path):
    class KernelModel(nn.Module):
        needs_kernel = True

        def forward(self, image, kernel=None):
            return image

    with pytest.raises(ExportError, match="KernelModel cannot be exported to ONNX: it deconvolves with a blur kernel"):
        export_onnx(KernelModel(), tmp_path / "k.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_exporter_packages_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(ExportError, match=r"needs the packages onnx and onnxscript \(pip install 'adeblur\[onnx\]'\)"):
        export_onnx(nn.Conv2d(3, 3, 1), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ExportError, match="it is a folder"):
        export_onnx(nn.Conv2d(3, 3, 1), tmp_path)
    with pytest.raises(ExportError, match="example_size"):
        export_onnx(nn.Conv2d(3, 3, 1), tmp_path / "m.onnx", example_size=(1, 8))


@needs_exporter
def test_untraceable_model_and_unreachable_opset_are_one_line_errors(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, image):
            return image * 2 if image.mean() > 0.5 else image  # Python branch on the pixel values

    with pytest.raises(ExportError, match="^cannot export DataDependent to ONNX: GuardOnDataDependent") as caught:
        export_onnx(DataDependent(), tmp_path / "d.onnx", example_size=(8, 8))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400
    assert "fixed-size" not in str(caught.value)  # a branch on pixel values fails at any size

    class Padded(nn.Module):
        def forward(self, image):
            return F.pad(image, (0, 1, 0, 1))[..., 1:, 1:]

    with pytest.raises(ExportError, match="could not write opset 17 .it wrote 18.; use opset 18 or newer"):
        export_onnx(Padded(), tmp_path / "p.onnx", example_size=(8, 8), opset=17)
    assert list(tmp_path.iterdir()) == []


@needs_exporter
def test_an_invalid_graph_is_an_error_not_a_file(tmp_path, monkeypatch):
    from onnx import TensorProto, helper

    # what an exporter bug once produced: a Concat of int32 and int64 tensors, which runtimes refuse to load
    graph = helper.make_graph(
        [helper.make_node("Concat", ["a", "b"], ["c"], axis=0)], "broken",
        [helper.make_tensor_value_info("a", TensorProto.INT32, [1]),
         helper.make_tensor_value_info("b", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("c", TensorProto.INT64, [2])],
    )  # fmt: skip
    broken = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    class Program:
        model_proto = broken

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())
    with pytest.raises(ExportError, match="the ONNX graph exported from Conv2d is not valid: InferenceError"):
        export_onnx(nn.Conv2d(3, 3, 1), tmp_path / "broken.onnx", dynamic=False)
    assert list(tmp_path.iterdir()) == []
