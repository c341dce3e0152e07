"""Custom operators for the spatially-adaptive models (M2AENet first).

Each op is a checked function plus, where it is a layer, a :class:`torch.nn.Module` wrapper, and a
``*_macs`` function giving its multiply-accumulates as the papers count them (see ``docs/ops.md``).
"""

from __future__ import annotations

from adeblur.ops.deform_conv import (
    DEFAULT_CHUNK_BYTES,
    DeformConv2d,
    SamplingPlan,
    build_sampling_plan,
    deform_conv2d,
    deform_conv2d_macs,
    deform_conv2d_planned,
    gather_pixels,
    mask_to_pixel_index,
    scatter_pixels,
    torchvision_deform_conv2d_usable,
)
from adeblur.ops.pruned_conv import MaskAwareConv, mask_aware_conv, mask_aware_conv_macs, repeat_channels
from adeblur.ops.splatting import ForwardWarp, forward_warp, forward_warp_macs
from adeblur.ops.trajectory import linear_trajectory, motion_aware_offsets, quadratic_trajectory, trajectory_macs

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DeformConv2d",
    "ForwardWarp",
    "MaskAwareConv",
    "SamplingPlan",
    "build_sampling_plan",
    "deform_conv2d",
    "deform_conv2d_macs",
    "deform_conv2d_planned",
    "forward_warp",
    "forward_warp_macs",
    "gather_pixels",
    "linear_trajectory",
    "mask_aware_conv",
    "mask_aware_conv_macs",
    "mask_to_pixel_index",
    "motion_aware_offsets",
    "quadratic_trajectory",
    "repeat_channels",
    "scatter_pixels",
    "torchvision_deform_conv2d_usable",
    "trajectory_macs",
]
