"""Export a model's dense inference path to ONNX (``adeblur export``).

:func:`export_onnx` traces the model with PyTorch's ``torch.export``-based ONNX exporter
(``torch.onnx.export(..., dynamo=True)``, which needs the ``onnx`` and ``onnxscript`` packages: the
``[onnx]`` extra) and writes one self-contained ``.onnx`` file atomically. The graph has one input
``image`` (batch, 3, height, width), float32 RGB in [0, 1], and one output ``restored`` of the same
shape (not clamped: clamp to [0, 1] before saving, as ``adeblur deblur`` does). With ``dynamic=True``
(default) batch, height and width are symbolic: the model's padding to ``size_multiple`` and the
crop back are traced as shape arithmetic, so any size runs.

What is exported is the model's eval-mode forward with M2AENet's ``pruned_inference`` off: the dense
masked path (mask-aware conv and motion-aware DConv at every pixel, blended by the predicted mask),
which computes the same function as the pruned path. The pruned path cannot be exported: the number
of blurred pixels (``torch.nonzero`` of the predicted mask), and so the shape of every gathered tensor,
depends on the image's content, and the pruned path uses that count as a Python integer (chunk loops,
index-table sizes), which ``torch.export`` cannot trace. See ``docs/export.md``.

Usage: ``export_onnx(build_model("m2aenet-lite"), "m2aenet-lite.onnx")`` (tens of seconds on a CPU).
Models that deconvolve with a given blur kernel have no single-input graph to export:

>>> class KernelDeconvolution(nn.Module):
...     needs_kernel = True
>>> export_onnx(KernelDeconvolution(), "never-written.onnx")
Traceback (most recent call last):
...
adeblur.engine.export.ExportError: KernelDeconvolution cannot be exported to ONNX: it deconvolves with ...
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adeblur import __version__
from adeblur.errors import AdeblurError, one_line

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "ExportError", "export_onnx"]

INPUT_NAME = "image"
OUTPUT_NAME = "restored"
#: Names of the symbolic axes of the input and the output (batch, channels, height, width).
_AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_TRANSLATED_OPERATOR = re.compile(r"target=(torch\.ops\.[\w.]+)")
#: Loggers of the exporter and its helpers, quieted while exporting (the library never prints).
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript", "onnx_ir")


class ExportError(AdeblurError, RuntimeError):
    """A model that cannot be exported to ONNX, or an exporter that is not installed. One line."""


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    example_size: tuple[int, int] = (256, 256),
    dynamic: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model``'s dense eval-mode forward to ``path`` as an ONNX graph.

    Args:
        model: an image restorer mapping (B, 3, H, W) to (B, 3, H, W), e.g. from
            :func:`adeblur.models.build_model` or :func:`adeblur.engine.infer.load_model`. It is put
            in eval mode with M2AENet's ``pruned_inference`` off (and ``forced_blur_mask`` cleared)
            for the export and restored afterwards. Its parameters' device and dtype are used.
        path: the ``.onnx`` file to write (folders are created); replaced atomically.
        opset: ONNX operator set version. 18 is the oldest PyTorch 2.13's exporter writes: its
            operator library targets 18, and ONNX's converter has no way down for ``Pad``.
        example_size: (height, width) of the random example the exporter traces with.
        dynamic: symbolic batch, height and width (default); False fixes them to a batch of one
            at ``example_size``.
        metadata: extra string key/value pairs stored in the model's ``metadata_props`` (the CLI
            stores the model name and weights file). Always stored: ``adeblur_version``,
            ``model_class``, ``size_multiple``, ``input``, ``output``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: ``onnx`` / ``onnxscript`` are not installed; the model needs a blur kernel
            (classical deconvolution, ``needs_kernel = True``); the exporter rejects the model, cannot
            write ``opset`` or writes a graph that fails ONNX's checker (with type inference); or the
            file cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"cannot write the ONNX model to '{path}': it is a folder")
    height, width = (int(s) for s in example_size)
    if height < 2 or width < 2:
        raise ExportError(f"example_size must be at least 2x2, got {tuple(example_size)}")
    name = type(model).__name__
    if getattr(model, "needs_kernel", False):
        raise ExportError(
            f"{name} cannot be exported to ONNX: it deconvolves with a blur kernel given per image "
            "(a classical method); export a learned model such as m2aenet-lite"
        )
    onnx = _import_exporter()
    parameter = next(model.parameters(), None)
    device = torch.device("cpu") if parameter is None else parameter.device
    dtype = torch.float32 if parameter is None else parameter.dtype
    channels = getattr(model, "image_channels", 3)
    batch = 2 if dynamic else 1  # a batch of one would be specialised to 1 by torch.export
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(batch, channels, height, width, generator=generator).to(device=device, dtype=dtype)
    with _dense_eval(model), _quiet_exporter(), torch.no_grad():
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                dynamic_shapes=(_AXIS_NAMES,) if dynamic else None,  # named symbolic sizes
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                verbose=False,
                optimize=True,
            )
        except Exception as error:  # noqa: BLE001 - the exporter raises many types; all mean "not exportable"
            raise ExportError(f"cannot export {name} to ONNX: {_failure_reason(error, dynamic)}") from error
    proto = program.model_proto
    if dynamic:  # the output has the input's shape; the exporter names its sizes by the crop's arithmetic
        output_dims = proto.graph.output[0].type.tensor_type.shape.dim
        for axis, axis_name in _AXIS_NAMES.items():
            output_dims[axis].dim_param = axis_name
    written = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(
            f"the ONNX exporter could not write opset {opset} (it wrote {written}); "
            f"use opset {written} or newer"
        )
    properties = {
        **{prop.key: prop.value for prop in proto.metadata_props},
        "adeblur_version": __version__,
        "model_class": name,
        "size_multiple": str(getattr(model, "size_multiple", 1)),
        "input": f"{INPUT_NAME}: float (batch, {channels}, height, width), RGB in [0, 1]",
        "output": f"{OUTPUT_NAME}: same shape as {INPUT_NAME}, not clamped (clamp to [0, 1])",
        **{str(key): str(value) for key, value in (metadata or {}).items()},
    }
    onnx.helper.set_model_props(proto, properties)
    try:  # with type and shape inference: a graph a runtime would refuse to load is an error here, not later
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        reason = _failure_reason(error, dynamic=False)
        raise ExportError(f"the ONNX graph exported from {name} is not valid: {reason}") from error
    _write_atomically(path, proto.SerializeToString())
    return path


def _import_exporter() -> Any:
    """The ``onnx`` module, after checking that the ONNX exporter's packages import."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx.export(dynamo=True) translates with it
    except ImportError as error:
        raise ExportError(
            f"ONNX export needs the packages onnx and onnxscript (pip install 'adeblur[onnx]'): {one_line(error)}"
        ) from error
    return onnx


@contextlib.contextmanager
def _dense_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode, dense path (``pruned_inference = False``), no forced mask; restored afterwards."""
    modules = [m for m in model.modules() if hasattr(m, "pruned_inference")]
    saved_pruned = [m.pruned_inference for m in modules]
    saved_masks = [getattr(m, "forced_blur_mask", None) for m in modules]
    training = model.training
    model.eval()
    try:
        for module in modules:
            module.pruned_inference = False
            if hasattr(module, "forced_blur_mask"):
                module.forced_blur_mask = None
        yield
    finally:
        model.train(training)
        for module, pruned, mask in zip(modules, saved_pruned, saved_masks):
            module.pruned_inference = pruned
            if hasattr(module, "forced_blur_mask"):
                module.forced_blur_mask = mask


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter: its log records and warnings (progress notes, unused torchvision ops) and
    what it prints (torch.export writes the partial graph of a failed trace to standard error)."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    discarded = io.StringIO()
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stdout(discarded), contextlib.redirect_stderr(discarded):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _failure_reason(error: BaseException, dynamic: bool) -> str:
    """One line from an exporter error chain (whose messages run to pages): the root cause's first line,
    the operator being translated when a translation failed (at most 300 characters), and, for a
    dynamic export that did not fail on data-dependent control flow, the hint to try a fixed size."""
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 32:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    lines = [line.strip() for line in _ANSI_ESCAPE.sub("", str(root)).splitlines() if line.strip()]
    reason = f"{type(root).__name__}: {lines[0]}" if lines else type(root).__name__
    for cause in chain:
        operator = _TRANSLATED_OPERATOR.search(str(cause))
        if operator:
            reason += f" (translating {operator.group(1)})"
            break
    reason = one_line(reason)
    reason = reason if len(reason) <= 300 else reason[:297] + "..."
    if dynamic and "DataDependent" not in type(root).__name__:  # a value-dependent branch fails at any size
        reason += "; a fixed-size export (dynamic=False, `adeblur export --static`) may work"
    return reason


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ExportError(f"cannot write the ONNX model to '{path}': {error.strerror or error}") from error
