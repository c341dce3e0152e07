"""Training checkpoints and weights files: safetensors only, written atomically, read without pickle.

* A **checkpoint** (:func:`save_checkpoint`, :func:`load_checkpoint`) is one ``.safetensors`` file with all
  a killed run needs to resume: model weights, optional EMA weights, the optimizer's state, RNG states
  and a JSON dict of the caller's (config, step, scheduler state, metrics...).
* A **weights file** (:func:`save_weights`) holds one state dict, for shipping and ``--weights``;
  :func:`load_weights` reads either kind.
* :class:`CheckpointManager` names checkpoints by step, keeps the last ``k`` and finds the newest
  complete one; :func:`capture_rng_states` / :func:`restore_rng_states` carry the random streams.

Every write goes to a temporary file beside the target, is flushed to disk, then renamed over it: a
crash at any moment leaves the old file or the complete new one, never a partial one. Reading uses
``safetensors`` and ``json`` only (never ``pickle`` / ``torch.load``), so a file cannot run code.
The file format is described in docs/checkpoints.md.

>>> import tempfile, torch
>>> folder = tempfile.TemporaryDirectory()
>>> model = torch.nn.Linear(2, 1)
>>> optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.9))
>>> model(torch.ones(1, 2)).sum().backward(); optimizer.step()
>>> manager = CheckpointManager(folder.name, keep_last=2)
>>> path = manager.save(1, model_state=model.state_dict(), optimizer_state=optimizer.state_dict(),
...                     rng_states=capture_rng_states(), metadata={"step": 1, "config": {"lr": 1e-3}})
>>> path.name, manager.latest() == path
('step_00000001.safetensors', True)
>>> checkpoint = load_checkpoint(path)
>>> checkpoint.metadata["step"], checkpoint.optimizer_state["param_groups"][0]["betas"]
(1, (0.9, 0.9))
>>> state_dict, metadata = load_weights(path)  # a checkpoint works as a weights file too
>>> torch.equal(state_dict["weight"], model.weight)
True
>>> folder.cleanup()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from adeblur.errors import CheckpointError, ConfigError, one_line

__all__ = [
    "CHECKPOINT_FORMAT",
    "WEIGHTS_FORMAT",
    "Checkpoint",
    "CheckpointManager",
    "capture_rng_states",
    "checkpoint_step",
    "load_checkpoint",
    "load_weights",
    "restore_rng_states",
    "save_checkpoint",
    "save_weights",
]

#: The ``"format"`` entry of a training checkpoint's safetensors metadata.
CHECKPOINT_FORMAT = "adeblur-checkpoint/1"
#: The ``"format"`` entry of a plain weights file's safetensors metadata.
WEIGHTS_FORMAT = "adeblur-weights/1"

_NO_GENERATORS: Mapping[str, torch.Generator] = MappingProxyType({})

# How non-JSON values are written inside the "adeblur" JSON entry (optimizer state only).
_TENSOR_MARK = "__tensor__"  # {"__tensor__": "optimizer/state/0/exp_avg"}: the tensor stored under that name
_TUPLE_MARK = "__tuple__"  # {"__tuple__": [0.9, 0.999]}: a tuple (JSON has lists only)


# --------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read from one checkpoint file.

    Attributes:
        model_state: the model's state dict (``model.load_state_dict(checkpoint.model_state)``).
        ema_state: the EMA model's state dict, or ``None`` when none was saved.
        optimizer_state: ready for ``optimizer.load_state_dict``, or ``None`` when none was saved.
        rng_states: for :func:`restore_rng_states`; always on the CPU.
        metadata: the caller's JSON dict as saved (tuples come back as lists, dict keys as strings).
        path: the file read.
    """

    model_state: dict[str, Tensor]
    ema_state: dict[str, Tensor] | None
    optimizer_state: dict[str, Any] | None
    rng_states: dict[str, Tensor]
    metadata: dict[str, Any]
    path: Path


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model_state: Mapping[str, Tensor],
    optimizer_state: Mapping[str, Any] | None = None,
    ema_state: Mapping[str, Tensor] | None = None,
    rng_states: Mapping[str, Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a training checkpoint to ``path`` atomically; return ``path``.

    Tensors may live on any device; they are detached and copied where safetensors needs it (strided
    views, tensors sharing storage such as tied weights). The parent folder is created if needed.

    Args:
        model_state: ``model.state_dict()``.
        optimizer_state: ``optimizer.state_dict()`` of any ``torch.optim`` optimizer (tensors, numbers,
            ``None``, strings, tuples, lists and dicts of those).
        ema_state: the state dict of an exponential-moving-average copy of the model.
        rng_states: :func:`capture_rng_states` output.
        metadata: the caller's JSON-serialisable dict: config, step, scheduler state, metrics...
            (floats may be ``nan``/``inf``).

    Raises:
        CheckpointError: the file cannot be written (the message names it and the reason).
        TypeError: a state value that cannot be stored, or ``metadata`` that is not JSON-serialisable.

    >>> import tempfile, torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = save_checkpoint(f"{folder.name}/run/last.safetensors", model_state={"w": torch.ones(2)},
    ...                        metadata={"step": 7})
    >>> load_checkpoint(path).metadata
    {'step': 7}
    >>> folder.cleanup()
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    _add_prefixed(tensors, "model", model_state)
    if ema_state is not None:
        _add_prefixed(tensors, "ema", ema_state)
    for name, state in (rng_states or {}).items():
        if not isinstance(state, Tensor):
            raise TypeError(f"rng_states[{name!r}] is a {type(state).__name__}, not a tensor")
        tensors[f"rng/{name}"] = state
    contents = {
        "metadata": dict(metadata or {}),
        "optimizer": None if optimizer_state is None else _encode_optimizer_state(optimizer_state, tensors),
        "ema": ema_state is not None,
    }
    try:
        text = json.dumps(contents)
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint metadata is not JSON-serialisable: {one_line(error)}") from error
    _write_atomically(path, tensors, {"format": CHECKPOINT_FORMAT, "adeblur": text}, "checkpoint")
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; tensors go to ``map_location``.

    RNG states stay on the CPU (where ``set_state`` wants them). Nothing is unpickled.

    Raises:
        CheckpointError: the file is missing or unreadable, is not a safetensors file (garbage,
            truncated), is not an adeblur checkpoint (e.g. a weights file), or has a format version
            this adeblur cannot read.

    >>> import tempfile, torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = save_weights(f"{folder.name}/w.safetensors", {"w": torch.ones(1)})
    >>> load_checkpoint(path)
    Traceback (most recent call last):
    ...
    adeblur.errors.CheckpointError: '.../w.safetensors' is a weights file, not a training checkpoint; ...
    >>> folder.cleanup()
    """
    path = Path(path)
    device = torch.device(map_location)
    with _opened(path) as file:
        header = file.metadata() or {}
        _check_checkpoint_format(path, header)
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 -- not a dict
    contents = _checkpoint_contents(path, header)

    def with_prefix(prefix: str, to: torch.device) -> dict[str, Tensor]:
        return {name[len(prefix) :]: t.to(to) for name, t in tensors.items() if name.startswith(prefix)}

    placed = {name: tensor.to(device) for name, tensor in tensors.items() if name.startswith("optimizer/")}
    try:
        optimizer_state = (
            None if contents["optimizer"] is None else _decode_optimizer_state(contents["optimizer"], placed)
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{_quote(path)}: corrupt optimizer state ({one_line(error)})") from error
    return Checkpoint(
        model_state=with_prefix("model/", device),
        ema_state=with_prefix("ema/", device) if contents["ema"] else None,
        optimizer_state=optimizer_state,
        rng_states=with_prefix("rng/", torch.device("cpu")),
        metadata=contents["metadata"],
        path=path,
    )


# --------------------------------------------------------------------------------------------------
# Weights files


def save_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    *,
    metadata: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a plain weights file (for shipping, ``--weights``) to ``path`` atomically; return ``path``.

    Args:
        state_dict: tensors under their state-dict names.
        metadata: optional JSON-serialisable dict (model name, options...), stored as the ``"adeblur"``
            entry and returned by :func:`load_weights`.
        dtype: e.g. ``torch.float16`` to halve the file; converts floating-point tensors only.

    Raises:
        CheckpointError: the file cannot be written.
        TypeError: a value that is not a tensor, or ``metadata`` that is not JSON-serialisable.

    >>> import tempfile, torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> weights = {"w": torch.tensor([0.1]), "n": torch.tensor([3])}
    >>> path = save_weights(f"{folder.name}/w.safetensors", weights, metadata={"model": "nafnet-lite"},
    ...                     dtype=torch.float16)
    >>> state_dict, metadata = load_weights(path)
    >>> state_dict["w"].dtype, state_dict["n"].dtype, metadata
    (torch.float32, torch.int64, {'model': 'nafnet-lite'})
    >>> folder.cleanup()
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    _add_prefixed(tensors, "", state_dict)
    if dtype is not None:
        tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
    header = {"format": WEIGHTS_FORMAT}
    if metadata is not None:
        try:
            header["adeblur"] = json.dumps(dict(metadata))
        except (TypeError, ValueError) as error:
            raise TypeError(f"weights metadata is not JSON-serialisable: {one_line(error)}") from error
    _write_atomically(path, tensors, header, "weights file")
    return path


def load_weights(
    path: str | os.PathLike[str], *, prefer_ema: bool = True, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read model weights from a weights file or a training checkpoint: ``(state_dict, metadata)``.

    * A weights file (:func:`save_weights`): its tensors, and its ``"adeblur"`` JSON (``{}`` if none).
    * A checkpoint (:func:`save_checkpoint`): the EMA weights when saved and ``prefer_ema``, else the
      model weights; the metadata is the checkpoint's caller dict. Optimizer tensors are not read.
    * Any other safetensors file (one without an ``adeblur-...`` format, e.g. converted upstream
      weights): all its tensors as a state dict, metadata ``{}``.

    Floating-point tensors are returned as ``float32`` (a float16 file loads into a float32 model).

    Raises:
        CheckpointError: missing, unreadable or non-safetensors file, or an unsupported adeblur format.
    """
    path = Path(path)
    device = torch.device(map_location)
    with _opened(path) as file:
        header = file.metadata() or {}
        if header.get("format") == CHECKPOINT_FORMAT:
            contents = _checkpoint_contents(path, header)
            prefix = "ema/" if prefer_ema and contents["ema"] else "model/"
            metadata = contents["metadata"]
        else:
            _check_not_newer_adeblur_format(path, header, WEIGHTS_FORMAT)
            prefix = ""
            metadata = _parse_json(path, header["adeblur"]) if "adeblur" in header else {}
        state_dict = {
            name[len(prefix) :]: file.get_tensor(name)
            for name in file.keys()  # noqa: SIM118 -- not a dict
            if name.startswith(prefix)
        }
    state_dict = {
        name: tensor.to(device, torch.float32 if tensor.is_floating_point() else tensor.dtype)
        for name, tensor in state_dict.items()
    }
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{_quote(path)}: its 'adeblur' metadata is not a JSON object")
    return state_dict, metadata


# --------------------------------------------------------------------------------------------------
# Random number generator states


def capture_rng_states(generators: Mapping[str, torch.Generator] = _NO_GENERATORS) -> dict[str, Tensor]:
    """The states of torch's random streams, as ``uint8`` CPU tensors for :func:`save_checkpoint`.

    Keys: ``"torch"`` (the global CPU generator), ``"cuda/<i>"`` for each CUDA device when CUDA has been
    initialised in this process, and ``"generator/<name>"`` for each of ``generators`` (CPU or CUDA).

    >>> import torch
    >>> generator = torch.Generator().manual_seed(0)
    >>> states = capture_rng_states({"data": generator})
    >>> first = torch.rand(2, generator=generator)
    >>> restore_rng_states(states, {"data": generator})
    >>> torch.equal(torch.rand(2, generator=generator), first)
    True
    """
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            states[f"cuda/{index}"] = torch.cuda.get_rng_state(index)
    for name, generator in generators.items():
        states[f"generator/{name}"] = generator.get_state()
    return states


def restore_rng_states(
    states: Mapping[str, Tensor], generators: Mapping[str, torch.Generator] = _NO_GENERATORS
) -> None:
    """Put back the states :func:`capture_rng_states` took: the global generator and ``generators``.

    ``"cuda/<i>"`` states are restored for the CUDA devices present and ignored when CUDA is not
    available (resuming a GPU run on the CPU) or device ``i`` does not exist. States of generators not
    named in ``generators`` are ignored.

    Raises:
        CheckpointError: ``"torch"`` or the state of a named generator is missing or unusable.
    """
    needed = ["torch", *(f"generator/{name}" for name in generators)]
    missing = [name for name in needed if name not in states]
    if missing:
        raise CheckpointError(f"no saved RNG state for {', '.join(missing)}")
    targets = [("torch", torch.set_rng_state)]
    targets += [(f"generator/{name}", generator.set_state) for name, generator in generators.items()]
    if torch.cuda.is_available():
        for name in states:
            index = name.removeprefix("cuda/")
            if name.startswith("cuda/") and index.isdigit() and int(index) < torch.cuda.device_count():
                targets.append((name, lambda state, index=int(index): torch.cuda.set_rng_state(state, index)))
    for name, set_state in targets:
        try:
            set_state(states[name].to("cpu", torch.uint8))
        except (RuntimeError, ValueError, TypeError) as error:
            raise CheckpointError(f"unusable saved RNG state {name!r}: {one_line(error)}") from error


# --------------------------------------------------------------------------------------------------
# A folder of checkpoints

_STEP_NAME = re.compile(r"step_(\d+)\.safetensors")
_BEST_NAME = "best.safetensors"


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step in a ``step_XXXXXXXX.safetensors`` name; ``-1`` for any other name (e.g. ``best``).

    >>> checkpoint_step("run/checkpoints/step_00000250.safetensors"), checkpoint_step("best.safetensors")
    (250, -1)
    """
    match = _STEP_NAME.fullmatch(Path(path).name)
    return int(match[1]) if match else -1
# Temporary files of _write_atomically for the manager's own names,
# e.g. ".step_00000010.safetensors.tmp-4711-9f2c1a0b" (process id, random suffix).
_MANAGER_TEMPORARY_NAME = re.compile(r"\.(?:step_\d+|best)\.safetensors\.tmp-\d+-[0-9a-f]+")


class CheckpointManager:
    """One training run's checkpoints in one folder: ``step_XXXXXXXX.safetensors`` and ``best.safetensors``.

    On construction the folder is created, and temporary files a killed run left behind (only those of
    the manager's own names) are removed, so a folder must belong to one run at a time.

    Args:
        directory: the folder.
        keep_last: how many step checkpoints :meth:`save` keeps (the newest by step; ``best`` is extra).

    >>> import tempfile, torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> manager = CheckpointManager(folder.name, keep_last=2)
    >>> for step in (10, 20, 30):
    ...     _ = manager.save(step, model_state={"w": torch.full((1,), float(step))}, metadata={"step": step})
    >>> [path.name for path in manager.checkpoints()]
    ['step_00000020.safetensors', 'step_00000030.safetensors']
    >>> load_checkpoint(manager.latest()).metadata["step"]
    30
    >>> folder.cleanup()
    """

    def __init__(self, directory: str | os.PathLike[str], keep_last: int = 3) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ConfigError(f"keep_last must be an integer >= 1, got {keep_last!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for entry in self.directory.iterdir():
                if _MANAGER_TEMPORARY_NAME.fullmatch(entry.name):
                    entry.unlink(missing_ok=True)
        except OSError as error:
            raise CheckpointError(
                f"cannot prepare checkpoint folder {_quote(self.directory)}: {_reason(error)}"
            ) from error

    def save(self, step: int, **kwargs: Any) -> Path:
        """Write ``step_{step:08d}.safetensors`` (:func:`save_checkpoint` with ``kwargs``), then delete the
        step checkpoints beyond the newest ``keep_last`` by step, never the one just written."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        path = save_checkpoint(self.directory / f"step_{step:08d}.safetensors", **kwargs)
        for old in self.checkpoints()[: -self.keep_last]:
            if old != path:
                try:
                    old.unlink(missing_ok=True)
                except OSError as error:
                    message = f"cannot delete old checkpoint {_quote(old)}: {_reason(error)}"
                    raise CheckpointError(message) from error
        return path

    def save_best(self, **kwargs: Any) -> Path:
        """Write ``best.safetensors`` (:func:`save_checkpoint` with ``kwargs``) over the previous one."""
        return save_checkpoint(self.directory / _BEST_NAME, **kwargs)

    def checkpoints(self) -> list[Path]:
        """The step checkpoints in the folder, sorted by step (complete or not: see :meth:`latest`)."""
        try:
            matches = [(_STEP_NAME.fullmatch(entry.name), entry) for entry in self.directory.iterdir()]
        except OSError as error:
            raise CheckpointError(
                f"cannot list checkpoint folder {_quote(self.directory)}: {_reason(error)}"
            ) from error
        return [entry for _, entry in sorted((int(match[1]), entry) for match, entry in matches if match)]

    def latest(self) -> Path | None:
        """The highest-step checkpoint :func:`load_checkpoint` can open (a truncated or foreign file is
        skipped for the one before it), or ``None`` when there is none."""
        for path in reversed(self.checkpoints()):
            try:
                with _opened(path) as file:
                    header = file.metadata() or {}
                _check_checkpoint_format(path, header)
                _checkpoint_contents(path, header)
            except CheckpointError:
                continue
            return path
        return None


# --------------------------------------------------------------------------------------------------
# Helpers


def _quote(path: Path) -> str:
    return repr(str(path))


def _reason(error: OSError) -> str:
    return one_line(error.strerror or error)


def _add_prefixed(tensors: dict[str, Tensor], prefix: str, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into ``tensors`` under ``"<prefix>/<name>"`` (``"<name>"`` for an empty prefix)."""
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensors[f"{prefix}/{name}" if prefix else name] = tensor


def _encode_optimizer_state(state_dict: Mapping[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    """``optimizer.state_dict()`` as JSON-able data, its tensors moved into ``tensors`` under
    ``optimizer/state/<param index>/<key>`` (and ``optimizer/param_groups/<i>/<key>`` for tensor
    hyper-parameters)."""
    state = {}
    for index, values in state_dict["state"].items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"optimizer state key {index!r} is not a parameter index")
        state[str(index)] = _to_json_tree(values, f"optimizer/state/{index}", tensors)
    groups = [
        _to_json_tree(group, f"optimizer/param_groups/{number}", tensors)
        for number, group in enumerate(state_dict["param_groups"])
    ]
    return {"state": state, "param_groups": groups}


def _decode_optimizer_state(encoded: dict[str, Any], tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    """Inverse of :func:`_encode_optimizer_state`: exactly what ``optimizer.state_dict()`` gave."""
    return {
        "state": {int(index): _from_json_tree(values, tensors) for index, values in encoded["state"].items()},
        "param_groups": [_from_json_tree(group, tensors) for group in encoded["param_groups"]],
    }


def _to_json_tree(value: Any, name: str, tensors: dict[str, Tensor]) -> Any:
    """``value`` with each tensor stored in ``tensors`` under ``name`` (its path) and replaced by a
    ``{"__tensor__": name}`` reference, and each tuple written ``{"__tuple__": [...]}``."""
    if isinstance(value, Tensor):
        tensors[name] = value
        return {_TENSOR_MARK: name}
    if isinstance(value, (tuple, list)):
        items = [_to_json_tree(item, f"{name}/{number}", tensors) for number, item in enumerate(value)]
        return {_TUPLE_MARK: items} if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{name}: cannot store the non-string key {key!r}")
        return {key: _to_json_tree(item, f"{name}/{key}", tensors) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{name}: cannot store a value of type {type(value).__name__}")


def _from_json_tree(value: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`_to_json_tree`."""
    if isinstance(value, dict):
        if value.keys() == {_TENSOR_MARK}:
            return tensors[value[_TENSOR_MARK]]
        if value.keys() == {_TUPLE_MARK}:
            return tuple(_from_json_tree(item, tensors) for item in value[_TUPLE_MARK])
        return {key: _from_json_tree(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json_tree(item, tensors) for item in value]
    return value


def _storable(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` as safetensors accepts them: detached, contiguous, no two sharing storage."""
    storages: set[tuple[torch.device, int]] = set()
    result = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        if tensor.layout != torch.strided:
            raise TypeError(f"cannot store the {tensor.layout} tensor {name!r}; make it dense first")
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        if not tensor.is_contiguous():
            tensor = tensor.contiguous()
        elif storage in storages:  # tied weights, views of one buffer
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        storages.add(storage)
        result[name] = tensor
    return result


def _write_atomically(path: Path, tensors: Mapping[str, Tensor], header: dict[str, str], what: str) -> None:
    """Write a safetensors file to a temporary file beside ``path``, fsync it, rename it over ``path`` and
    fsync the folder, so that ``path`` is always either the old file or the complete new one."""
    stored = _storable(tensors)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(stored, temporary, metadata=header)
        os.chmod(temporary, 0o666 & ~_umask())  # safetensors creates 0600 files; make it an ordinary file
        with open(temporary, "r+b") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CheckpointError(f"cannot write {what} {_quote(path)}: {_reason(error)}") from error
        if isinstance(error, SafetensorError):
            raise CheckpointError(f"cannot write {what} {_quote(path)}: {one_line(error)}") from error
        raise
    _fsync_folder(path.parent)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable; skipped where folders cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """``safe_open(path)`` on the CPU, with every way it can fail turned into a one-line CheckpointError."""
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            yield file
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint or weights file {_quote(path)} does not exist") from error
    except OSError as error:
        raise CheckpointError(f"cannot read {_quote(path)}: {_reason(error)}") from error
    except SafetensorError as error:
        raise CheckpointError(
            f"{_quote(path)} is not a complete safetensors file (corrupt or truncated?): {one_line(error)}"
        ) from error


def _check_checkpoint_format(path: Path, header: Mapping[str, str]) -> None:
    found = header.get("format")
    if found == CHECKPOINT_FORMAT:
        return
    _check_not_newer_adeblur_format(path, header, CHECKPOINT_FORMAT)
    if found == WEIGHTS_FORMAT:
        raise CheckpointError(
            f"{_quote(path)} is a weights file, not a training checkpoint; use it as --weights, not to resume"
        )
    raise CheckpointError(f"{_quote(path)} is not an adeblur checkpoint (format {found!r})")


def _check_not_newer_adeblur_format(path: Path, header: Mapping[str, str], expected: str) -> None:
    """Raise if ``header`` names another version of ``expected``'s format (``"adeblur-weights/2"``)."""
    found = header.get("format")
    family, _, version = expected.partition("/")
    if found is not None and found != expected and found.startswith(f"{family}/"):
        raise CheckpointError(
            f"{_quote(path)} has format {found!r}, which this version of adeblur cannot read "
            f"(it reads {family} version {version})"
        )


def _checkpoint_contents(path: Path, header: Mapping[str, str]) -> dict[str, Any]:
    """The ``"adeblur"`` JSON entry of a checkpoint, checked for its three keys."""
    contents = _parse_json(path, header.get("adeblur", ""))
    if (
        not isinstance(contents, dict)
        or not isinstance(contents.get("metadata"), dict)
        or not isinstance(contents.get("optimizer"), (dict, type(None)))
        or not isinstance(contents.get("ema"), bool)
    ):
        raise CheckpointError(f"{_quote(path)}: malformed 'adeblur' metadata in the checkpoint header")
    return contents


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        message = f"{_quote(path)}: its 'adeblur' metadata is not valid JSON ({one_line(error)})"
        raise CheckpointError(message) from error
