"""Custom operators for the spatially-adaptive models (M2AENet, SAPHNet).

Each op is a checked function plus, where it is a layer, a :class:`torch.nn.Module` wrapper, and a
``*_macs`` function giving its multiply-accumulates as the papers count them (see ``docs/ops.md``).
"""

from __future__ import annotations

from adeblur.ops.attention import (
    AttentiveFusion,
    EfficientAttention,
    attentive_fusion,
    cluster_descriptors,
    distribute_descriptors,
    efficient_attention,
)
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
from adeblur.ops.pixel_filter import (
    PixelDependentFilter,
    direction_to_degrees,
    dominant_offset_direction,
    pixel_dependent_filter,
    pixel_dependent_filter_macs,
)
from adeblur.ops.pruned_conv import MaskAwareConv, mask_aware_conv, mask_aware_conv_macs, repeat_channels
from adeblur.ops.splatting import ForwardWarp, forward_warp, forward_warp_macs
from adeblur.ops.trajectory import linear_trajectory, motion_aware_offsets, quadratic_trajectory, trajectory_macs

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "AttentiveFusion",
    "DeformConv2d",
    "EfficientAttention",
    "ForwardWarp",
    "MaskAwareConv",
    "PixelDependentFilter",
    "SamplingPlan",
    "attentive_fusion",
    "build_sampling_plan",
    "cluster_descriptors",
    "deform_conv2d",
    "deform_conv2d_macs",
    "deform_conv2d_planned",
    "direction_to_degrees",
    "distribute_descriptors",
    "dominant_offset_direction",
    "efficient_attention",
    "forward_warp",
    "forward_warp_macs",
    "gather_pixels",
    "linear_trajectory",
    "mask_aware_conv",
    "mask_aware_conv_macs",
    "mask_to_pixel_index",
    "motion_aware_offsets",
    "pixel_dependent_filter",
    "pixel_dependent_filter_macs",
    "quadratic_trajectory",
    "repeat_channels",
    "scatter_pixels",
    "torchvision_deform_conv2d_usable",
    "trajectory_macs",
]
