"""SAPHNet: spatially-adaptive patch-hierarchical network (Suin et al., CVPR 2020).

Top-down, as the paper's Fig. 2 and Sec. 2-3:

1. The DMPHN patch hierarchy (:mod:`adeblur.models.dmphn`) with 3 levels of 1, 2, 4 patches, run
   bottom-up (4 patches first); each level an encoder and a decoder; no depth stacking. A level's
   input is its image patches plus the level below's output; the top level's output is the residual.
2. Encoder and decoder keep DMPHN's shape (3x3 conv 3 -> ``widths[0]``, stride-2 3x3 convs to the
   next widths; the decoder mirrors it with 4x4 stride-2 transposed convs and a 3x3 conv to 3), with
   DMPHN's residual blocks replaced by :class:`ContentAwareResBlock` s: conv -> ReLU -> content-aware
   module -> conv, plus the skip.
3. :class:`ContentAwareModule` (Fig. 3): global branch = efficient attention (Eq. 10,
   :class:`~adeblur.ops.EfficientAttention`), local branch = pixel-dependent filtering (Eq. 11,
   :class:`~adeblur.ops.PixelDependentFilter`, 5x5), fused per pixel by a sigmoid mask from one conv
   on the module's input (Eq. 12-13, :class:`~adeblur.ops.AttentiveFusion`).
4. Cross encoder-decoder attention (Sec. 3.1.2): in the decoders, the global branch adds an attention
   whose maps come from the decoder features and whose attended features come from the matching
   encoder layer (decoder block ``j`` of a scale <- encoder block ``count - 1 - j`` of that scale, the
   U-Net mirror).
5. Cross-level attention: where DMPHN sums the level below's features into a level's features, SAPHNet
   adds an attention whose maps come from the level's features and whose attended features are the
   level below's: ``features + CLA(features, lower_features)``.

The Table 3 switches are options: ``self_attention`` (SA), ``cross_attention`` (CA),
``cross_level_attention`` (CLA; off: DMPHN's sum), ``adaptive_kernel`` (the PDF's V; off: V = 1) and
``learn_offsets`` (the PDF's offsets; off: 0, ``saphnet-a``). With every switch off each block is
``x + conv3x3(conv5x5(relu(conv3x3(x))))`` (the PDF as a plain 5x5 conv, no activation after it), in the
default layout 3 such blocks at the deepest scale of every encoder and decoder and none at the finer
two: DMPHN's hierarchy and level convs, but not its blocks (DMPHN: 2 ``x + conv3x3(relu(conv3x3(x)))``
blocks at each of the 3 scales).

Choices the papers leave open (reasons and numbers in ``docs/saphnet.md``):

* Residual blocks per scale ``blocks = (0, 0, 3)``: 3 content-aware resblocks in each encoder and
  decoder, at the deepest, 128-filter scale (the issue's "3 resblocks per encoder and decoder; 128
  filters"; the paper's "3 resblocks in each encoder and decoder" and "all the convolutional layers
  within our proposed modules contain 128 filters"); the two finer scales keep only their level convs
  (encoder: 3x3 convs; decoder: transposed convs and the last conv). ``blocks=(2, 2, 3)`` is the other
  reading, the paper's "N = 3, M = 2, P = 2" as blocks per scale (DMPHN has 2 at each of its scales),
  every block content-aware.
* Decoder global branch with SA and CA both on: the sum of the two attentions' outputs.
* The block keeps DMPHN's ReLU after its first conv (the paper: "1 convolution layer followed by a
  content-aware processing module and another convolutional layer").
* Cross-level attention and the decoder's cross-attention run on the patches the decoder sees (the
  next level up's grid); encoder features are re-cut to that grid.
* Output = input + top decoder output (registry contract), as in :class:`~adeblur.models.dmphn.DMPHN`.
* Padding: the image is zero-padded (right, bottom) to ``size_multiple``; every attention gets the
  valid region of its patches (``EfficientAttention(..., valid=...)``), so the padded pixels take no
  part in the global pooling (cluster maps and channel gate). This reduces the padding's reach, but
  does not remove it: the convolutions see the padding near the right and bottom borders, and those
  border pixels enter the pooling; and the patches are cut from the padded image (measurements in
  ``docs/saphnet.md``, "Padding").

``forward(image, return_aux=True)`` returns ``(restored, aux)`` with the maps of one module, the first
content-aware module of the top level's encoder (at the finest scale that has blocks: 1/4 resolution
by default, full resolution with ``blocks=(2, 2, 3)``): ``cluster_map`` (B, 1, h, w; the first cluster
map Q_1 of its self-attention (its cross-attention if SA is off), a spatial softmax), ``fusion_mask``
(B, 1, h, w; M_fus of Eq. 12, weight of the attention branch) and ``offset_direction`` (B, 2, h, w; the mean (dx, dy) of its PDF
offsets over the taps, in input pixels, x right, y down) -- the keys the variant has -- and ``scale``
(that module's downsampling factor). :meth:`SAPHNet.extra_maps` turns them into the ``--save-maps``
pictures ``attention``, ``fusion_mask`` and ``offset_direction``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adeblur.models.dmphn import (
    check_levels,
    hierarchy_size_multiple,
    merge_patches,
    patch_grid,
    regrid,
    split_patches,
)
from adeblur.models.nafnet import check_image_batch, pad_to_multiple
from adeblur.ops import AttentiveFusion, EfficientAttention, PixelDependentFilter, dominant_offset_direction

__all__ = [
    "ContentAwareModule",
    "ContentAwareResBlock",
    "SAPHNet",
    "SAPHNetDecoder",
    "SAPHNetEncoder",
]

#: Bound on the PDF offsets, in pixels of the module's scale (the paper sets a threshold, not its value).
DEFAULT_MAX_DISPLACEMENT = 3.0


class ContentAwareModule(nn.Module):
    """Global-local module (Fig. 3): attention || pixel-dependent filter, fused per pixel (Eq. 12-13).

    ``y = M * y_att + (1 - M) * y_dyn`` with ``M = sigmoid(conv(x))``, ``y_att`` the self-attention of
    ``x`` plus (``cross_attention``) the attention of ``source`` with maps from ``x``, and ``y_dyn``
    the pixel-dependent filter of ``x``. Without any attention the module is the filter alone.

    Args:
        channels: C of the input, output and ``source``.
        clusters: C2, the attention's cluster maps.
        self_attention: the SA branch.
        cross_attention: the CA branch (then ``forward`` needs ``source``).
        adaptive_kernel: the PDF's pixel-adaptive kernel V (off: V = 1).
        learn_offsets: the PDF's learned offsets (off: 0).
        max_displacement: bound on the offsets, pixels.
        gate_input: the attention's channel-gate input, ``"pooled"`` or ``"descriptors"``.
        kernel_size: the PDF's K.

    >>> module = ContentAwareModule(8, clusters=4)
    >>> y, maps = module(torch.rand(1, 8, 6, 6), return_maps=True)
    >>> y.shape, sorted(maps)
    (torch.Size([1, 8, 6, 6]), ['cluster_map', 'fusion_mask', 'offset_direction'])
    """

    def __init__(
        self,
        channels: int,
        *,
        clusters: int = 16,
        self_attention: bool = True,
        cross_attention: bool = False,
        adaptive_kernel: bool = True,
        learn_offsets: bool = True,
        max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
        gate_input: str = "pooled",
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.self_attention = EfficientAttention(channels, clusters, gate_input=gate_input) if self_attention else None
        self.cross_attention = (
            EfficientAttention(channels, clusters, gate_input=gate_input) if cross_attention else None
        )
        self.filter = PixelDependentFilter(
            channels,
            kernel_size=kernel_size,
            max_displacement=max_displacement,
            learn_offsets=learn_offsets,
            adaptive_kernel=adaptive_kernel,
        )
        self.learn_offsets = learn_offsets
        self.fusion = AttentiveFusion(channels) if self_attention or cross_attention else None

    def forward(
        self, x: Tensor, source: Tensor | None = None, *, valid: Tensor | None = None, return_maps: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """x (B, C, H, W) [, source (B, C, H, W) for cross-attention] -> y (B, C, H, W) [, maps].

        ``valid`` (B, 1, H, W): the attentions' valid region (see :class:`~adeblur.ops.EfficientAttention`).
        """
        if self.cross_attention is not None and source is None:
            raise ValueError("this module has cross-attention: pass the attended features as source")
        maps: dict[str, Tensor] = {}
        if return_maps:
            filtered, offsets = self.filter(x, return_offsets=True)
            if self.learn_offsets:
                maps["offset_direction"] = dominant_offset_direction(offsets)
        else:
            filtered = self.filter(x)
        if self.fusion is None:
            return (filtered, maps) if return_maps else filtered
        attended: Tensor | None = None
        for attention, attended_source in ((self.self_attention, None), (self.cross_attention, source)):
            if attention is None:
                continue
            if return_maps:
                y, attention_maps = attention(x, attended_source, valid=valid, return_maps=True)
                maps.setdefault("cluster_map", attention_maps["cluster_maps"][:, :1])
            else:
                y = attention(x, attended_source, valid=valid)
            attended = y if attended is None else attended + y
        if not return_maps:
            return self.fusion(x, attended, filtered)
        fused, maps["fusion_mask"] = self.fusion(x, attended, filtered, return_mask=True)
        return fused, maps


class ContentAwareResBlock(nn.Module):
    """SAPHNet's residual block: ``x + conv(module(relu(conv(x)), source))``, 3x3 convs, C channels.

    Keyword arguments go to :class:`ContentAwareModule`.

    >>> ContentAwareResBlock(8, clusters=4)(torch.rand(1, 8, 5, 5)).shape
    torch.Size([1, 8, 5, 5])
    """

    def __init__(self, channels: int, **module_options: Any) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.module = ContentAwareModule(channels, **module_options)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(
        self, x: Tensor, source: Tensor | None = None, *, valid: Tensor | None = None, return_maps: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        hidden = torch.relu(self.conv1(x))
        if return_maps:
            hidden, maps = self.module(hidden, source, valid=valid, return_maps=True)
            return x + self.conv2(hidden), maps
        return x + self.conv2(self.module(hidden, source, valid=valid))


class SAPHNetEncoder(nn.Module):
    """One level's encoder: (B, 3, H, W) -> features (B, widths[-1], H / 2**(S-1), W / 2**(S-1)) + block outputs.

    Per scale s: a 3x3 conv (stride 1 for the first, else 2) to ``widths[s]``, then ``blocks[s]``
    :class:`ContentAwareResBlock` s (self-attention only). ``forward`` returns ``(features, outputs)``,
    ``outputs[s]`` the list of that scale's block outputs (what the decoder's cross-attention attends
    to), and with ``return_maps`` also the maps of the first block. ``valid`` (optional, one
    (B, 1, h_s, w_s) mask per scale) is each scale's valid region for the attentions.

    >>> encoder = SAPHNetEncoder((4, 8), (1, 1), clusters=2)
    >>> features, outputs = encoder(torch.rand(1, 3, 8, 8))
    >>> features.shape, [len(o) for o in outputs]
    (torch.Size([1, 8, 4, 4]), [1, 1])
    """

    def __init__(
        self, widths: Sequence[int], blocks: Sequence[int], image_channels: int = 3, **module_options: Any
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.stages = nn.ModuleList()
        previous = image_channels
        for index, (width, count) in enumerate(zip(widths, blocks)):
            self.convs.append(nn.Conv2d(previous, width, 3, stride=1 if index == 0 else 2, padding=1))
            self.stages.append(nn.ModuleList(ContentAwareResBlock(width, **module_options) for _ in range(count)))
            previous = width

    def forward(
        self, image: Tensor, *, valid: Sequence[Tensor] | None = None, return_maps: bool = False
    ) -> tuple[Tensor, list[list[Tensor]]] | tuple[Tensor, list[list[Tensor]], dict[str, Any]]:
        x = image
        outputs: list[list[Tensor]] = []
        maps: dict[str, Any] = {}
        for scale, (conv, stage) in enumerate(zip(self.convs, self.stages)):
            x = conv(x)
            outputs.append([])
            region = None if valid is None else valid[scale]
            for block in stage:
                if return_maps and "scale" not in maps:
                    x, block_maps = block(x, valid=region, return_maps=True)
                    maps = {**block_maps, "scale": 2**scale}
                else:
                    x = block(x, valid=region)
                outputs[-1].append(x)
        return (x, outputs, maps) if return_maps else (x, outputs)


class SAPHNetDecoder(nn.Module):
    """One level's decoder, the encoder's mirror: features (B, widths[-1], h, w) -> (B, 3, h * 2**(S-1), w * 2**(S-1)).

    Per scale, coarse to fine: ``blocks[s]`` :class:`ContentAwareResBlock` s (self- and, with
    ``cross_attention``, cross encoder-decoder attention: block ``j`` attends to encoder output
    ``encoder_outputs[s][blocks[s] - 1 - j]``), then a 4x4 stride-2 transposed conv to the next finer
    width; a 3x3 conv to 3 channels at the end. ``encoder_outputs`` is needed with ``cross_attention``
    only; ``valid`` (optional, one (B, 1, h_s, w_s) mask per scale) as for the encoder.

    >>> decoder = SAPHNetDecoder((4, 8), (1, 1), clusters=2, cross_attention=True)
    >>> encoder_outputs = [[torch.rand(1, 4, 8, 8)], [torch.rand(1, 8, 4, 4)]]
    >>> decoder(torch.rand(1, 8, 4, 4), encoder_outputs).shape
    torch.Size([1, 3, 8, 8])
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        image_channels: int = 3,
        *,
        cross_attention: bool = True,
        **module_options: Any,
    ) -> None:
        super().__init__()
        self.cross_attention = cross_attention
        self.stages = nn.ModuleList()  # finest scale first, as the encoder's
        self.ups = nn.ModuleList()  # ups[s]: widths[s + 1] -> widths[s]
        for index, (width, count) in enumerate(zip(widths, blocks)):
            self.stages.append(
                nn.ModuleList(
                    ContentAwareResBlock(width, cross_attention=cross_attention, **module_options) for _ in range(count)
                )
            )
            if index + 1 < len(widths):
                self.ups.append(nn.ConvTranspose2d(widths[index + 1], width, 4, stride=2, padding=1))
        self.ending = nn.Conv2d(widths[0], image_channels, 3, padding=1)

    def forward(
        self,
        features: Tensor,
        encoder_outputs: Sequence[Sequence[Tensor]] | None = None,
        *,
        valid: Sequence[Tensor] | None = None,
    ) -> Tensor:
        if self.cross_attention and encoder_outputs is None:
            raise ValueError("this decoder has cross-attention: pass the encoder outputs")
        x = features
        for scale in reversed(range(len(self.stages))):
            if scale + 1 < len(self.stages):
                x = self.ups[scale](x)
            stage = self.stages[scale]
            region = None if valid is None else valid[scale]
            for index, block in enumerate(stage):
                source = encoder_outputs[scale][len(stage) - 1 - index] if self.cross_attention else None
                x = block(x, source, valid=region)
        return self.ending(x)


class SAPHNet(nn.Module):
    """SAPHNet image restorer: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) (the input plus a learned residual).

    Args:
        levels: patches per level, top (whole image) first; the paper's (1, 2, 4).
        widths: channels per encoder scale (stride-2 convs between scales).
        blocks: content-aware residual blocks per scale, in every encoder and decoder; default 3 at the
            deepest (128-filter) scale only, ``(2, 2, 3)`` for the blocks-at-every-scale reading.
        clusters: C2, cluster maps of every attention.
        self_attention, cross_attention, cross_level_attention, adaptive_kernel, learn_offsets: the
            Table 3 switches (SA, CA, CLA, kernel, offset); see the module docstring.
        max_displacement: bound on the PDF offsets, pixels of each module's scale.
        gate_input: the attention's channel-gate input, ``"pooled"`` (Eq. 10) or ``"descriptors"`` (Eq. 7).
        kernel_size: the PDF's K (paper: 5).
        image_channels: channels of the input and output images.

    Attributes:
        encoders, decoders: one per level, top level first.
        cross_level: ``cross_level[i]`` attends from level ``i``'s features to level ``i + 1``'s (empty
            without CLA).
        size_multiple: sizes that need no padding.

    >>> model = SAPHNet(widths=(4, 8), blocks=(1, 1), clusters=2)
    >>> model.size_multiple
    4
    >>> model(torch.rand(1, 3, 10, 13)).shape
    torch.Size([1, 3, 10, 13])
    """

    def __init__(
        self,
        levels: Sequence[int] = (1, 2, 4),
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (0, 0, 3),
        clusters: int = 16,
        *,
        self_attention: bool = True,
        cross_attention: bool = True,
        cross_level_attention: bool = True,
        adaptive_kernel: bool = True,
        learn_offsets: bool = True,
        max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
        gate_input: str = "pooled",
        kernel_size: int = 5,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        if not widths or len(blocks) != len(widths):
            raise ValueError(f"blocks {tuple(blocks)} must give one count per width {tuple(widths)}")
        self.image_channels = image_channels
        self.scales = len(widths)
        self.cross_attention = cross_attention
        self.size_multiple = hierarchy_size_multiple(self.levels, 2 ** (len(widths) - 1))
        module_options = {
            "clusters": clusters,
            "self_attention": self_attention,
            "adaptive_kernel": adaptive_kernel,
            "learn_offsets": learn_offsets,
            "max_displacement": max_displacement,
            "gate_input": gate_input,
            "kernel_size": kernel_size,
        }
        self.encoders = nn.ModuleList(
            SAPHNetEncoder(widths, blocks, image_channels, **module_options) for _ in self.levels
        )
        self.decoders = nn.ModuleList(
            SAPHNetDecoder(widths, blocks, image_channels, cross_attention=cross_attention, **module_options)
            for _ in self.levels
        )
        self.cross_level = nn.ModuleList(
            EfficientAttention(widths[-1], clusters, gate_input=gate_input)
            for _ in (self.levels[:-1] if cross_level_attention else ())
        )

    def forward(self, image: Tensor, *, return_aux: bool = False) -> Tensor | tuple[Tensor, dict[str, Any]]:
        """(B, 3, H, W) -> (B, 3, H, W), any H and W (padded inside); with ``return_aux``, also the maps."""
        check_image_batch(image, self.image_channels)
        height, width = image.shape[-2:]
        padded = pad_to_multiple(image, self.size_multiple)
        region = _valid_region(padded, height, width, self.scales)  # None without padding
        lower_output = torch.zeros_like(padded)  # the level below's decoder output, whole image
        lower_features: Tensor | None = None  # the level below's features, whole image
        aux: dict[str, Any] = {}
        for index in reversed(range(len(self.levels))):  # bottom-up: most patches first
            grid = patch_grid(self.levels[index])
            decode_grid = patch_grid(self.levels[max(index - 1, 0)])  # the next level up's patches
            valid = None if region is None else [split_patches(mask, grid) for mask in region]
            decode_valid = None if region is None else [split_patches(mask, decode_grid) for mask in region]
            maps_here = return_aux and index == 0
            encoded = self.encoders[index](
                split_patches(padded + lower_output, grid), valid=valid, return_maps=maps_here
            )
            if maps_here:
                aux = encoded[2]
            features = regrid(encoded[0], grid, decode_grid)
            encoder_outputs = None
            if self.cross_attention:  # the decoder's cross-attention attends to them on its own patches
                encoder_outputs = [[regrid(output, grid, decode_grid) for output in scale] for scale in encoded[1]]
            if lower_features is not None:
                lower = split_patches(lower_features, decode_grid)
                if self.cross_level:  # CLA: maps from this level, attended features from the level below
                    cla_valid = None if decode_valid is None else decode_valid[-1]
                    features = features + self.cross_level[index](features, lower, valid=cla_valid)
                else:  # DMPHN's sum
                    features = features + lower
            decoded = self.decoders[index](features, encoder_outputs, valid=decode_valid)
            lower_output = merge_patches(decoded, decode_grid)
            lower_features = merge_patches(features, decode_grid)
        restored = (padded + lower_output)[..., :height, :width].contiguous()
        if not return_aux:
            return restored
        return restored, _crop_maps(aux, height, width)

    def extra_maps(self, aux: dict[str, Any]) -> dict[str, Tensor]:
        """The ``--save-maps`` pictures' maps from ``aux``: ``attention`` (the cluster map),
        ``fusion_mask`` and ``offset_direction`` (B, 2, h, w, input pixels), those the variant has."""
        names = {"cluster_map": "attention", "fusion_mask": "fusion_mask", "offset_direction": "offset_direction"}
        return {names[key]: value for key, value in aux.items() if key in names}


def _valid_region(padded: Tensor, height: int, width: int, scales: int) -> list[Tensor] | None:
    """Per encoder scale s, (B, 1, H / 2**s, W / 2**s) bool, True on the image's own pixels (not the
    padding): the first ceil(height / 2**s) rows and ceil(width / 2**s) columns. None without padding."""
    if padded.shape[-2:] == (height, width):
        return None
    masks = []
    for scale in range(scales):
        factor = 2**scale
        rows = torch.arange(padded.shape[-2] // factor, device=padded.device) < -(-height // factor)
        columns = torch.arange(padded.shape[-1] // factor, device=padded.device) < -(-width // factor)
        masks.append((rows[:, None] & columns[None, :]).expand(padded.shape[0], 1, -1, -1))
    return masks


def _crop_maps(maps: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """Maps of a padded image at scale ``maps["scale"]`` -> the image's own region; offsets in input pixels."""
    if not maps:
        return {}
    scale = maps["scale"]
    rows, columns = -(-height // scale), -(-width // scale)
    cropped = {key: value[..., :rows, :columns] for key, value in maps.items() if key != "scale"}
    if "offset_direction" in cropped:
        cropped["offset_direction"] = cropped["offset_direction"] * scale
    return {**cropped, "scale": scale}
