"""Profiling a model: parameters, multiply-accumulates (MACs), wall-clock time and peak memory.

* :func:`count_macs` counts the multiply-accumulates of one forward pass the way the papers do
  (convolutions and matrix products; see docs/profiling.md), including the work of custom ops.
* :func:`make_blob_mask` draws a blur mask covering a given fraction of the image with a few compact
  blobs, and :func:`force_blur_mask` makes a model use it instead of its predicted mask.
* :func:`measure_peak_memory` measures the peak memory of one call.
* :func:`profile_model` puts them together: the ``adeblur profile`` report.

The custom-op protocol: a module whose work the aten-level counter cannot see (gathers over a subset
of pixels, bilinear sampling, products written as element-wise multiply-and-sum) sets
``self.macs_of_last_call`` (an ``int``) on every call of its ``forward``. :func:`count_macs` then uses
that number for the module's whole call, children included, instead of what it saw inside. Modules one
cannot edit are covered by a ``custom_counters`` entry instead; :data:`BUILTIN_MAC_COUNTERS` holds the
ones for adeblur's own ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import math
import os
import resource
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from adeblur.data.transforms import as_generator
from adeblur.errors import ConfigError
from adeblur.ops import DeformConv2d, deform_conv2d_macs

__all__ = [
    "BUILTIN_MAC_COUNTERS",
    "MacCounter",
    "MacReport",
    "count_macs",
    "force_blur_mask",
    "make_blob_mask",
    "measure_peak_memory",
    "profile_model",
    "randomise_zero_parameters_",
    "resolve_device",
]

#: ``counter(module, args, kwargs, output) -> MACs`` of one call of ``module``.
MacCounter = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], int]

#: Key of :attr:`MacReport.by_child` for work done by the model's own ``forward`` outside its children.
OWN_WORK = "(model)"


# --------------------------------------------------------------------------------------------------
# Multiply-accumulates


@dataclass(frozen=True)
class MacReport:
    """Multiply-accumulates of one forward pass.

    Attributes:
        total: all MACs of the call.
        by_module_type: MACs by the class name of the innermost module that did the work (a module
            reporting its own count through the custom-op protocol gets its whole subtree). Sums to
            ``total``; types that did no counted work are left out.
        by_child: MACs by the modules the model's ``forward`` calls directly (its top-level
            children, or the items of its top-level ``ModuleList``s), by qualified name, plus
            ``"(model)"`` for work in the model's own ``forward`` outside them. Sums to ``total``;
            entries with no counted work are left out.
    """

    total: int
    by_module_type: dict[str, int] = field(default_factory=dict)
    by_child: dict[str, int] = field(default_factory=dict)


@dataclass
class _Call:
    """A module call in progress: the count when it started and what its finished sub-calls did."""

    start: int
    inner_macs: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_child: Counter[str] = field(default_factory=Counter)


class _MacTally:
    """Counts aten-level MACs with :class:`FlopCounterMode` and splits them by module with hooks."""

    def __init__(self, model: nn.Module, custom_counters: Mapping[type, MacCounter]) -> None:
        self._model = model
        self._custom_counters = dict(custom_counters)
        self._names = {}
        for name, module in model.named_modules():
            self._names.setdefault(id(module), name)
        self._flops = FlopCounterMode(display=False)
        self._reported_minus_seen = 0
        self._stack: list[_Call] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.report = MacReport(total=0)

    def __enter__(self) -> _MacTally:
        for module in self._model.modules():
            self._handles.append(module.register_forward_pre_hook(self._enter_call))
            self._handles.append(module.register_forward_hook(self._leave_call, with_kwargs=True))
        self._flops.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._flops.__exit__(*exc_info)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _macs_so_far(self) -> int:
        # FlopCounterMode counts 2 FLOPs per multiply-accumulate for every op it knows.
        return self._flops.get_total_flops() // 2 + self._reported_minus_seen

    def _enter_call(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if "macs_of_last_call" in vars(module):  # a count left from an earlier call must not be reused
            module.macs_of_last_call = None
        self._stack.append(_Call(self._macs_so_far()))

    def _leave_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        call = self._stack.pop()
        seen = self._macs_so_far() - call.start
        reported = self._reported_macs(module, args, kwargs, output)
        if reported is None:
            macs, own = seen, seen - call.inner_macs
            call.by_type[type(module).__name__] += own
        else:  # the module's own count replaces everything seen inside it
            self._reported_minus_seen += reported - seen
            macs = own = reported
            call.by_type = Counter({type(module).__name__: reported})
            call.by_child = Counter()
        if self._stack:
            parent = self._stack[-1]
            parent.inner_macs += macs
            parent.by_type.update(call.by_type)
            if len(self._stack) == 1:  # the parent is the model itself
                parent.by_child[self._names.get(id(module), type(module).__name__)] += macs
            return
        call.by_child[OWN_WORK] += own
        self.report = MacReport(macs, _nonzero(call.by_type), _nonzero(call.by_child))

    def _reported_macs(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> int | None:
        for cls in type(module).__mro__:
            counter = self._custom_counters.get(cls)
            if counter is not None:
                return int(counter(module, args, kwargs, output))
        reported = getattr(module, "macs_of_last_call", None)
        return None if reported is None else int(reported)


def _nonzero(counts: Mapping[str, int]) -> dict[str, int]:
    return {key: value for key, value in counts.items() if value != 0}


def _deform_conv2d_counter(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> int:
    """MACs of one call of :class:`adeblur.ops.DeformConv2d` (all output pixels, or a plan's pixels)."""
    plan = kwargs.get("plan")
    num_pixels = plan.num_pixels if plan is not None else output.shape[0] * output.shape[2] * output.shape[3]
    return deform_conv2d_macs(
        module.in_channels, module.out_channels, module.kernel_size, num_pixels, groups=module.groups
    )


#: Counters :func:`count_macs` uses for adeblur's custom-op modules that do not report their own count.
BUILTIN_MAC_COUNTERS: Mapping[type, MacCounter] = MappingProxyType({DeformConv2d: _deform_conv2d_counter})


def count_macs(
    model: nn.Module,
    example_input: Tensor | tuple[Any, ...],
    *,
    custom_counters: Mapping[type, MacCounter] | None = None,
) -> MacReport:
    """Multiply-accumulates of one forward pass of ``model`` on ``example_input`` (run under ``no_grad``).

    Counted, at the level of aten ops (so functional calls count too, with the shapes they really ran
    on: a product over a subset of pixels counts only that subset), one MAC per multiply-accumulate:
    convolutions (``out elements x in_channels / groups x kh x kw``; transposed ones per input element),
    ``mm``/``addmm``/``bmm``/``baddbmm`` (``Linear``, ``matmul``, ``einsum``) and scaled dot-product
    attention. Not counted, as in the papers' tools: bias additions, element-wise ops, activations,
    normalisations, pooling, interpolation, gathers. Modules that report their own count (the
    ``macs_of_last_call`` protocol, ``custom_counters`` entries keyed by module class, and
    :data:`BUILTIN_MAC_COUNTERS` for adeblur's ops) replace what was seen inside them.

    The model runs in whatever mode it is in (call ``model.eval()`` first for the inference cost).

    Args:
        model: any module.
        example_input: the forward's positional argument, or a tuple of them.
        custom_counters: ``{module class: counter(module, args, kwargs, output) -> MACs}``, added to
            (and overriding) :data:`BUILTIN_MAC_COUNTERS`.

    Returns:
        a :class:`MacReport` (total, by module type, by top-level child).

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    >>> report = count_macs(net, torch.rand(1, 3, 10, 10))
    >>> report.total == 100 * 8 * 3 * 9 + 100 * 8 * 1 * 9
    True
    >>> report.by_child
    {'0': 21600, '2': 7200}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    counters = {**BUILTIN_MAC_COUNTERS, **(custom_counters or {})}
    with _MacTally(model, counters) as tally, torch.no_grad():
        model(*args)
    return tally.report


# --------------------------------------------------------------------------------------------------
# Fixed blur masks


def make_blob_mask(
    height: int,
    width: int,
    fraction: float,
    *,
    generator: torch.Generator | int,
    num_blobs: int = 3,
) -> Tensor:
    """A blur mask covering ``fraction`` of the pixels with a few compact blobs, like moving objects.

    Each blob is an ellipse with a random centre (in the middle 70% of each side), orientation, aspect
    ratio (1 to 2.5) and relative size (0.6 to 1). All blobs are scaled by one common factor until
    exactly ``round(fraction * height * width)`` pixels are covered (the pixels nearest to a blob
    centre in each blob's own elliptical metric win), so the covered fraction is exact to one pixel.
    Blobs may overlap or be cut by the border.

    Args:
        height, width: mask size.
        fraction: share of pixels to cover, in [0, 1].
        generator: a CPU ``torch.Generator`` or an integer seed; the same seed gives the same mask.
        num_blobs: number of ellipses.

    Returns:
        (1, 1, height, width) float32 mask on the CPU, 1 = blurred.

    Raises:
        ConfigError: ``fraction`` outside [0, 1].

    >>> mask = make_blob_mask(40, 50, 0.1, generator=0)
    >>> mask.shape, int(mask.sum())
    (torch.Size([1, 1, 40, 50]), 200)
    """
    if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive ints, got {height!r} x {width!r}")
    if not isinstance(num_blobs, int) or num_blobs <= 0:
        raise ValueError(f"num_blobs must be a positive int, got {num_blobs!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"mask fraction must be in [0, 1], got {fraction}")
    generator = as_generator(generator)
    blobs = torch.rand(num_blobs, 5, generator=generator, dtype=torch.float64)
    covered = round(fraction * height * width)
    mask = torch.zeros(height * width)
    if covered == 0:
        return mask.view(1, 1, height, width)
    centre_y = (0.15 + 0.7 * blobs[:, 0]) * height
    centre_x = (0.15 + 0.7 * blobs[:, 1]) * width
    angle = math.pi * blobs[:, 2]
    aspect = 1.0 + 1.5 * blobs[:, 3]
    radius = (0.6 + 0.4 * blobs[:, 4]) * math.sqrt(height * width)  # relative size; the scale is set below
    dy = (torch.arange(height, dtype=torch.float64) + 0.5).view(1, -1, 1) - centre_y.view(-1, 1, 1)
    dx = (torch.arange(width, dtype=torch.float64) + 0.5).view(1, 1, -1) - centre_x.view(-1, 1, 1)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    along = (dx * cos + dy * sin) / (radius * aspect.sqrt()).view(-1, 1, 1)
    across = (dy * cos - dx * sin) / (radius / aspect.sqrt()).view(-1, 1, 1)
    # Distance to the nearest blob in units of that blob's radii: a common threshold on it covers
    # the union of the ellipses scaled by one factor.
    distance = torch.hypot(along, across).amin(dim=0).flatten()
    mask[torch.topk(distance, covered, largest=False).indices] = 1.0
    return mask.view(1, 1, height, width)


@contextlib.contextmanager
def force_blur_mask(model: nn.Module, blur_mask: Tensor) -> Iterator[nn.Module]:
    """Within the block, ``model`` uses ``blur_mask`` instead of its predicted blur mask.

    Protocol: every module of ``model`` with a ``forced_blur_mask`` attribute gets ``blur_mask``
    assigned to it (the model resizes it to each of its scales) and its previous value back on exit.

    Args:
        model: a model with mask-aware modules (e.g. M2AENet).
        blur_mask: (B, 1, H, W) or (1, 1, H, W) mask in {0, 1} at the input's resolution.

    Raises:
        ConfigError: the model has no blur mask that can be replaced.

    >>> class Toy(nn.Module):
    ...     forced_blur_mask = None
    >>> toy = Toy()
    >>> with force_blur_mask(toy, torch.ones(1, 1, 4, 4)):
    ...     toy.forced_blur_mask.shape
    torch.Size([1, 1, 4, 4])
    >>> toy.forced_blur_mask is None
    True
    """
    if blur_mask.dim() != 4 or blur_mask.shape[1] != 1:
        raise ValueError(f"blur_mask must be (B, 1, H, W), got shape {tuple(blur_mask.shape)}")
    targets = [module for module in model.modules() if hasattr(module, "forced_blur_mask")]
    if not targets:
        raise ConfigError(
            f"model {type(model).__name__} has no blur mask to replace (no module with a 'forced_blur_mask' attribute)"
        )
    previous = [module.forced_blur_mask for module in targets]
    try:
        for module in targets:
            module.forced_blur_mask = blur_mask
        yield model
    finally:
        for module, value in zip(targets, previous):
            module.forced_blur_mask = value


# --------------------------------------------------------------------------------------------------
# Time and memory


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other names are checked.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for but not available.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"unknown device {device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} asked for, but CUDA is not available")
    return resolved


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU. Timers call it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(run: Callable[[], object], device: torch.device, *, repeats: int, warmup: int) -> float:
    """Median wall-clock seconds of ``run()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_PROC_STATUS = "/proc/self/status"
_PROC_STATM = "/proc/self/statm"
_PROC_CLEAR_REFS = "/proc/self/clear_refs"


def _status_bytes(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in bytes."""
    with open(_PROC_STATUS) as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # the kernel writes kB
    raise OSError(f"{key} not in {_PROC_STATUS}")


def _statm_resident_bytes() -> int:
    with open(_PROC_STATM) as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (returns freed heap memory to the OS), or None where there is none."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def _release_free_memory() -> None:
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _high_water_mark_resettable() -> bool:
    """Whether this kernel lets the process reset its peak resident size (Linux >= 4.0)."""
    try:
        with open(_PROC_CLEAR_REFS, "w") as clear_refs:
            clear_refs.write("5")
        _status_bytes("VmHWM")
    except OSError:
        return False
    return True


def _peak_rss_from_high_water_mark(run: Callable[[], object]) -> int:
    _release_free_memory()
    with open(_PROC_CLEAR_REFS, "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS
    before = _status_bytes("VmRSS")
    run()
    return _status_bytes("VmHWM") - before


def _peak_rss_from_sampling(run: Callable[[], object], interval_s: float) -> int:
    _release_free_memory()
    before = _statm_resident_bytes()
    max_rss_before = _ru_maxrss_bytes()
    samples = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_statm_resident_bytes())
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    peak = max(*samples, _statm_resident_bytes())
    max_rss_after = _ru_maxrss_bytes()
    if max_rss_after > max_rss_before:  # a fresh lifetime peak: set during this call, and exact
        peak = max(peak, max_rss_after)
    return peak - before


def measure_peak_memory(
    run: Callable[[], object],
    device: str | torch.device = "cpu",
    *,
    method: str = "auto",
    interval_s: float = 0.001,
) -> tuple[int | None, str]:
    """Peak memory of one call of ``run()``, in bytes, and the method that measured it.

    Methods:
        ``"cuda-allocator"`` (CUDA devices): the caching allocator's peak of allocated bytes
            (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, synchronised),
            weights and inputs included.
        ``"rss-high-water-mark"`` (CPU, Linux >= 4.0): the kernel's exact peak resident size of the
            process (``VmHWM``), reset to the current resident size by writing 5 to
            /proc/self/clear_refs just before the call, minus the resident size at that moment.
        ``"rss-sampled"`` (CPU, Linux fallback): the resident size read from /proc/self/statm by a
            background thread every ``interval_s``, plus ``ru_maxrss`` when the call set a new
            lifetime peak, minus the resident size just before the call. Misses spikes shorter
            than the interval.
        ``"unavailable"``: none of these works (not Linux); the peak is None.

    On the CPU, Python's garbage is collected and glibc's free heap memory released (``malloc_trim``)
    before the baseline is read, so memory reused from earlier calls shows up. The figure is for the
    whole process: other threads allocating at the same time are included.

    Args:
        run: the call to measure.
        device: where ``run`` computes.
        method: ``"auto"`` (the first of the above that works here), or one of them by name.
        interval_s: sampling interval of ``"rss-sampled"``.

    >>> peak, how = measure_peak_memory(lambda: torch.ones(2**22).sum(), "cpu")  # 16 MiB of float32
    >>> how in ("rss-high-water-mark", "rss-sampled") and peak > 15 * 2**20
    True
    """
    device = torch.device(device)
    methods = ("auto", "cuda-allocator", "rss-high-water-mark", "rss-sampled")
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got {method!r}")
    if method == "auto":
        if device.type == "cuda":
            method = "cuda-allocator"
        elif _high_water_mark_resettable():
            method = "rss-high-water-mark"
        elif os.path.exists(_PROC_STATM):
            method = "rss-sampled"
        else:
            run()
            return None, "unavailable"
    if method == "cuda-allocator":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device)), method
    if method == "rss-high-water-mark":
        return _peak_rss_from_high_water_mark(run), method
    return _peak_rss_from_sampling(run, interval_s), method


# --------------------------------------------------------------------------------------------------
# The report


def _main_output(output: Any) -> Tensor:
    """The restored image of a forward's output (a tensor, or the first item of a tuple/list)."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(f"the model returned {type(output).__name__}, not a tensor or a tuple starting with one")
    return output


def randomise_zero_parameters_(model: nn.Module, *, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Fill every parameter that is identically zero with seeded N(0, std^2) values; returns the model.

    Freshly initialised models carry exact zeros by design (NAFNet's residual scales beta/gamma, biases),
    which make whole blocks the identity: a pruned-vs-dense comparison on them is trivially exact and
    proves nothing. Profiling "with random weights" means weights like these.

    >>> net = randomise_zero_parameters_(nn.Conv2d(2, 2, 1))
    >>> bool((net.bias != 0).all())
    True
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.numel() and not parameter.any():
                values = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * std
                parameter.copy_(values.to(parameter.dtype))
    return model


def _resolve_model(model_or_name: nn.Module | str, seed: int) -> tuple[str, nn.Module]:
    if isinstance(model_or_name, str):
        from adeblur.models import build_model

        return model_or_name, randomise_zero_parameters_(build_model(model_or_name), seed=seed)
    if isinstance(model_or_name, nn.Module):
        return type(model_or_name).__name__, model_or_name
    raise TypeError(f"expected a model name or a torch.nn.Module, got {type(model_or_name).__name__}")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size):
        raise ConfigError(f"size must be two positive ints (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def profile_model(
    model_or_name: nn.Module | str,
    *,
    size: tuple[int, int] = (256, 256),
    mask_fraction: float | None = None,
    compare_dense: bool = False,
    device: str | torch.device = "auto",
    repeats: int = 5,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Parameters, MACs, time and peak memory of one forward pass: the ``adeblur profile`` report.

    The model (built by name from the registry with random weights, or given) is put in eval mode and
    moved to ``device``. Its input is one random (1, 3, H, W) image; when the model has a
    ``size_multiple`` attribute, H and W are rounded up to it (as the inference engine pads). Times
    are medians of ``repeats`` forward passes after ``warmup`` ones, under ``torch.inference_mode``
    (synchronised on CUDA); the peak memory is that of one further forward pass
    (:func:`measure_peak_memory`).

    Args:
        model_or_name: a registered model name (see ``adeblur models``; built with random weights, no
            parameter left identically zero: :func:`randomise_zero_parameters_`) or a module (as is).
        size: image size (height, width).
        mask_fraction: replace the predicted blur mask by a :func:`make_blob_mask` covering this
            fraction of the ``size`` pixels (:func:`force_blur_mask`); None keeps the predicted mask.
        compare_dense: also time the model with ``pruned_inference`` on and off and compare outputs.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        repeats, warmup: timed and untimed runs per measurement.
        seed: seed of the input image, of the blob mask and of the random weights.

    Returns:
        a JSON-ready dict. The contract's keys: ``model`` (name), ``size`` ([H, W] asked for),
        ``params``, ``macs`` (:func:`count_macs` total, default mode), ``seconds``,
        ``peak_mem_bytes`` (None where it cannot be measured); with ``compare_dense``:
        ``seconds_dense``, ``seconds_pruned``, ``max_abs_diff`` (between the two outputs) and
        ``macs_dense``, ``macs_pruned``. Also: ``input_size`` ([H, W] after rounding up),
        ``mask_fraction``, ``device``, ``threads`` (torch CPU threads), ``repeats``, ``warmup``,
        ``peak_mem_method``.

    Raises:
        ConfigError: an unknown model or device, a bad size, a mask fraction for a model without a
            replaceable mask, ``compare_dense`` for a model without a ``pruned_inference`` switch.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 1))
    >>> report = profile_model(net, size=(16, 16), device="cpu", repeats=1, warmup=0)
    >>> report["params"], report["macs"], report["size"]
    (127, 30720, [16, 16])
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = resolve_device(device)
    height, width = _check_size(size)
    name, model = _resolve_model(model_or_name, seed)
    model = model.eval().to(device)
    if compare_dense and not hasattr(model, "pruned_inference"):
        raise ConfigError(f"model {name} has no pruned path to compare with a dense one (no 'pruned_inference' switch)")
    if mask_fraction is not None and not any(hasattr(module, "forced_blur_mask") for module in model.modules()):
        raise ConfigError(f"model {name} has no blur mask to replace (no module with a 'forced_blur_mask' attribute)")
    multiple = int(getattr(model, "size_multiple", 1) or 1)
    input_height, input_width = -(-height // multiple) * multiple, -(-width // multiple) * multiple

    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, input_height, input_width, generator=generator).to(device)
    forcing: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if mask_fraction is not None:
        blur_mask = make_blob_mask(height, width, mask_fraction, generator=generator)
        blur_mask = F.pad(blur_mask, (0, input_width - width, 0, input_height - height)).to(device)
        forcing = force_blur_mask(model, blur_mask)

    def forward() -> Tensor:
        return _main_output(model(image))

    def measure() -> tuple[int, float, Tensor]:
        macs = count_macs(model, image).total
        with torch.inference_mode():
            output = forward()
            seconds = _median_seconds(forward, device, repeats=repeats, warmup=warmup)
        return macs, seconds, output

    report: dict[str, Any] = {
        "model": name,
        "size": [height, width],
        "params": sum(p.numel() for p in model.parameters()),
    }
    with forcing:
        macs, seconds, output = measure()
        with torch.inference_mode():
            peak_mem_bytes, peak_mem_method = measure_peak_memory(forward, device)
        report.update(macs=macs, seconds=seconds, peak_mem_bytes=peak_mem_bytes)
        if compare_dense:
            default_pruned = bool(model.pruned_inference)
            model.pruned_inference = not default_pruned
            try:
                results = {default_pruned: (macs, seconds, output), not default_pruned: measure()}
            finally:
                model.pruned_inference = default_pruned
            pruned, dense = results[True], results[False]
            report.update(
                seconds_dense=dense[1],
                seconds_pruned=pruned[1],
                max_abs_diff=float((pruned[2].float() - dense[2].float()).abs().max()),
                macs_dense=dense[0],
                macs_pruned=pruned[0],
            )
    report.update(
        input_size=[input_height, input_width],
        mask_fraction=mask_fraction,
        device=str(device),
        threads=torch.get_num_threads(),
        repeats=repeats,
        warmup=warmup,
        peak_mem_method=peak_mem_method,
    )
    return report
