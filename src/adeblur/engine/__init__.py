"""Engines that run models: training (``adeblur train``) and profiling (``adeblur profile``).

- :mod:`adeblur.engine.config`: YAML training configs, validated against a typed schema.
- :mod:`adeblur.engine.data`: the training data pipeline (weighted sources, resumable sample stream,
  blur made on the training device, a pool of reused pairs).
- :mod:`adeblur.engine.train`: the training loop (single process or ``torchrun``).
- :mod:`adeblur.engine.checkpoint`: checkpoints and weights as safetensors, atomic, no pickle.
- :mod:`adeblur.engine.optim`, :mod:`adeblur.engine.logging`: optimisers, schedules, EMA; CSV and
  TensorBoard logs.
- :mod:`adeblur.engine.profile`: parameters, MACs, time and memory (docs/profiling.md).

See docs/training.md.
"""

from __future__ import annotations

from adeblur.engine.checkpoint import (
    Checkpoint,
    CheckpointManager,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from adeblur.engine.config import TrainingConfig, config_from_dict, load_config
from adeblur.engine.profile import (
    BUILTIN_MAC_COUNTERS,
    MacCounter,
    MacReport,
    count_macs,
    force_blur_mask,
    make_blob_mask,
    measure_peak_memory,
    profile_model,
    randomise_zero_parameters_,
    resolve_device,
)
from adeblur.engine.train import TrainEvent, TrainResult, train

__all__ = [
    "BUILTIN_MAC_COUNTERS",
    "Checkpoint",
    "CheckpointManager",
    "MacCounter",
    "MacReport",
    "TrainEvent",
    "TrainResult",
    "TrainingConfig",
    "config_from_dict",
    "count_macs",
    "force_blur_mask",
    "load_checkpoint",
    "load_config",
    "load_weights",
    "make_blob_mask",
    "measure_peak_memory",
    "profile_model",
    "randomise_zero_parameters_",
    "resolve_device",
    "save_checkpoint",
    "save_weights",
    "train",
]
