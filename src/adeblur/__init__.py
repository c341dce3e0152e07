"""adeblur: spatially-adaptive motion deblurring in pure PyTorch.

Images are ``float32`` tensors in ``[0, 1]``, laid out ``(C, H, W)`` or ``(B, C, H, W)``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from adeblur.errors import AdeblurError, ConfigError, DatasetError, ImageError, KernelError, MetricError

__all__ = [
    "__version__",
    "AdeblurError",
    "ConfigError",
    "DatasetError",
    "ImageError",
    "KernelError",
    "MetricError",
]
