"""Engines that run models: profiling (``adeblur profile``); training, inference and evaluation follow.

See :mod:`adeblur.engine.profile` and docs/profiling.md.
"""

from __future__ import annotations

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
