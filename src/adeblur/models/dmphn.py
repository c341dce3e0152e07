"""DMPHN: deep multi-patch hierarchical network (Zhang et al., CVPR 2019), the baseline of SAPHNet.

Top-down, as the paper's Fig. 2 (one network, no depth stacking):

1. Levels of 1, 2, 4 (optionally 8) non-overlapping patches; the level with ``n`` patches cuts the
   image into the grid :func:`patch_grid` gives: 2 = top/bottom halves, 4 = quadrants, 8 = each
   quadrant cut into top/bottom halves (4 rows x 2 columns), as the official code slices.
2. Each level has its own :class:`DMPHNEncoder` (3x3 conv 3 -> 32, then per scale ``blocks`` residual
   blocks conv-ReLU-conv, with stride-2 3x3 convs to 64 and 128 channels: features at 1/4 resolution)
   and :class:`DMPHNDecoder` (the mirror: residual blocks, 4x4 stride-2 transposed convs 128 -> 64 ->
   32, 3x3 conv 32 -> 3).
3. Bottom-up (finest patches first): a level encodes its patches (its input: the image patches plus
   the output of the level below), adds the features of the level below (all features are put back
   together into whole-image maps, then cut into the patches at hand), and its decoder runs on the
   patches of the next level up (DMPHN decodes the 4-patch level's features in pairs, as halves).
   The top level's decoder output is the learned residual.

Reading of the official code (``DMPHN_1_2_4.py``) made here, and our choices:

* Feature sums: the features passed up are the *summed* features of a level (encoder output plus the
  features from below), as the official code passes ``feature_lv2`` (already containing level 3's) to
  level 1.
* The official model outputs ``decoder_lv1(...)`` directly: the top decoder predicts the sharp image
  (on images and targets shifted by -0.5). Here the model returns ``image + decoder_lv1(...)`` (the
  registry contract: input plus a learned residual), so the top decoder predicts the residual instead:
  a different parameterisation of the same network, not an equivalent one (a bias can absorb a
  constant such as the -0.5 shift, not the input image). Lower levels' outputs are added to the next
  level's input as in DMPHN.
* Any H, W: the image is zero-padded (right, bottom) to ``size_multiple`` = 4 x the largest grid side
  (so every patch halves twice), the output cropped back.

The pieces SAPHNet reuses live here: :class:`ResBlock`, :func:`patch_grid`, :func:`split_patches`,
:func:`merge_patches`, :func:`regrid`, :func:`hierarchy_size_multiple`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adeblur.models.nafnet import check_image_batch, pad_to_multiple

__all__ = [
    "DMPHN",
    "DMPHNDecoder",
    "DMPHNEncoder",
    "ResBlock",
    "check_levels",
    "hierarchy_size_multiple",
    "merge_patches",
    "patch_grid",
    "regrid",
    "split_patches",
]


def patch_grid(patches: int) -> tuple[int, int]:
    """(rows, columns) of the grid cutting an image into ``patches`` (a power of two) patches.

    Each doubling cuts every patch in two, alternately across the height and the width, the height
    first (DMPHN: 2 = top/bottom, 4 = quadrants, 8 = quadrants cut into top/bottom halves).

    >>> [patch_grid(n) for n in (1, 2, 4, 8)]
    [(1, 1), (2, 1), (2, 2), (4, 2)]
    """
    if isinstance(patches, bool) or not isinstance(patches, int) or patches < 1 or patches & (patches - 1):
        raise ValueError(f"the number of patches must be a power of two, got {patches!r}")
    doublings = patches.bit_length() - 1
    return 2 ** ((doublings + 1) // 2), 2 ** (doublings // 2)


def split_patches(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Cut (B, C, H, W) into a rows x columns grid of patches, stacked in the batch: (R*Co*B, C, H/R, W/Co).

    Patch-major order: all B images' top-left patches first, then the next patch in raster order.
    Inverse of :func:`merge_patches`.

    >>> x = torch.arange(16.0).view(1, 1, 4, 4)
    >>> split_patches(x, (2, 2))[:, 0, 0, 0].tolist()  # the top-left pixel of each quadrant
    [0.0, 2.0, 8.0, 10.0]
    """
    rows, columns = grid
    batch, channels, height, width = x.shape
    if height % rows or width % columns:
        raise ValueError(f"a {height}x{width} map does not split into a {rows}x{columns} grid of patches")
    if rows == columns == 1:
        return x
    patches = x.reshape(batch, channels, rows, height // rows, columns, width // columns)
    patches = patches.permute(2, 4, 0, 1, 3, 5)  # (rows, columns, B, C, h, w)
    return patches.reshape(rows * columns * batch, channels, height // rows, width // columns)


def merge_patches(patches: Tensor, grid: tuple[int, int]) -> Tensor:
    """Put a batch of patches from :func:`split_patches` back together: (R*Co*B, C, h, w) -> (B, C, R*h, Co*w).

    >>> x = torch.rand(2, 3, 4, 6)
    >>> torch.equal(merge_patches(split_patches(x, (2, 2)), (2, 2)), x)
    True
    """
    rows, columns = grid
    count, channels, height, width = patches.shape
    if count % (rows * columns):
        raise ValueError(f"{count} patches do not fill a {rows}x{columns} grid")
    if rows == columns == 1:
        return patches
    batch = count // (rows * columns)
    whole = patches.reshape(rows, columns, batch, channels, height, width).permute(2, 3, 0, 4, 1, 5)
    return whole.reshape(batch, channels, rows * height, columns * width)


def regrid(patches: Tensor, from_grid: tuple[int, int], to_grid: tuple[int, int]) -> Tensor:
    """Patches of one grid -> the same image cut into another grid (e.g. DMPHN's pairs of quadrants -> halves).

    >>> x = torch.rand(1, 2, 8, 8)
    >>> torch.equal(regrid(split_patches(x, (2, 2)), (2, 2), (2, 1)), split_patches(x, (2, 1)))
    True
    """
    if from_grid == to_grid:
        return patches
    return split_patches(merge_patches(patches, from_grid), to_grid)


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """Validate a patch hierarchy: 1 first, then each level doubling the patches, e.g. (1, 2, 4)."""
    levels = tuple(levels)
    if not levels or levels[0] != 1 or any(b != 2 * a for a, b in itertools.pairwise(levels)):
        raise ValueError(f"levels must be 1, 2, 4, ... (each level doubling the patches), got {levels}")
    return levels


def hierarchy_size_multiple(levels: Sequence[int], downsampling: int) -> int:
    """Image sizes (both sides) that every patch of every level splits into and downsamples without padding.

    >>> hierarchy_size_multiple((1, 2, 4), 4), hierarchy_size_multiple((1, 2, 4, 8), 4)
    (8, 16)
    """
    rows, columns = patch_grid(max(levels))
    return math.lcm(rows, columns) * downsampling


class ResBlock(nn.Module):
    """DMPHN's residual block, (B, C, H, W) -> (B, C, H, W): ``x + conv(relu(conv(x)))``, 3x3 convs.

    >>> ResBlock(4)(torch.rand(1, 4, 5, 5)).shape
    torch.Size([1, 4, 5, 5])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class DMPHNEncoder(nn.Module):
    """DMPHN encoder: (B, 3, H, W) -> (B, widths[-1], H / 2**(S-1), W / 2**(S-1)) with S = len(widths).

    3x3 conv to ``widths[0]``, ``blocks`` :class:`ResBlock` s; then per further width a stride-2 3x3 conv
    and ``blocks`` ResBlocks (DMPHN: widths 32, 64, 128; 2 blocks).

    >>> DMPHNEncoder(widths=(4, 8, 16))(torch.rand(1, 3, 8, 12)).shape
    torch.Size([1, 16, 2, 3])
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128), blocks: int = 2, image_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = image_channels
        for index, width in enumerate(widths):
            layers.append(nn.Conv2d(previous, width, 3, stride=1 if index == 0 else 2, padding=1))
            layers.extend(ResBlock(width) for _ in range(blocks))
            previous = width
        self.layers = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        return self.layers(image)


class DMPHNDecoder(nn.Module):
    """DMPHN decoder, the encoder's mirror: (B, widths[-1], h, w) -> (B, 3, h * 2**(S-1), w * 2**(S-1)).

    Per width, coarse to fine: ``blocks`` :class:`ResBlock` s, then a 4x4 stride-2 transposed conv to
    the next width; at the finest width a 3x3 conv to 3 channels.

    >>> DMPHNDecoder(widths=(4, 8, 16))(torch.rand(1, 16, 2, 3)).shape
    torch.Size([1, 3, 8, 12])
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128), blocks: int = 2, image_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        reversed_widths = list(reversed(widths))
        for index, width in enumerate(reversed_widths):
            layers.extend(ResBlock(width) for _ in range(blocks))
            if index + 1 < len(reversed_widths):
                layers.append(nn.ConvTranspose2d(width, reversed_widths[index + 1], 4, stride=2, padding=1))
        layers.append(nn.Conv2d(widths[0], image_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class DMPHN(nn.Module):
    """DMPHN image restorer: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) (the input plus a learned residual).

    Args:
        levels: patches per level, top (whole image) first: (1, 2, 4) (``dmphn``) or (1, 2, 4, 8)
            (``dmphn-1248``).
        widths: encoder channels per scale (each further scale halves the resolution).
        blocks: ResBlocks per scale in every encoder and decoder.
        image_channels: channels of the input and output images.

    Attributes:
        encoders, decoders: one per level, top level first (``encoders[0]`` sees the whole image).
        size_multiple: sizes that need no padding.

    >>> model = DMPHN(widths=(4, 8, 16), blocks=1)
    >>> model.size_multiple
    8
    >>> model(torch.rand(1, 3, 10, 13)).shape
    torch.Size([1, 3, 10, 13])
    """

    def __init__(
        self,
        levels: Sequence[int] = (1, 2, 4),
        widths: Sequence[int] = (32, 64, 128),
        blocks: int = 2,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        if not widths:
            raise ValueError("widths must name at least one scale")
        self.image_channels = image_channels
        self.size_multiple = hierarchy_size_multiple(self.levels, 2 ** (len(widths) - 1))
        self.encoders = nn.ModuleList(DMPHNEncoder(widths, blocks, image_channels) for _ in self.levels)
        self.decoders = nn.ModuleList(DMPHNDecoder(widths, blocks, image_channels) for _ in self.levels)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 3, H, W), any H and W (padded inside to ``size_multiple``)."""
        check_image_batch(image, self.image_channels)
        height, width = image.shape[-2:]
        padded = pad_to_multiple(image, self.size_multiple)
        lower_output = torch.zeros_like(padded)  # the level below's decoder output, whole image
        lower_features: Tensor | None = None  # the level below's summed features, whole image
        for index in reversed(range(len(self.levels))):  # bottom-up: most patches first
            grid = patch_grid(self.levels[index])
            features = merge_patches(self.encoders[index](split_patches(padded + lower_output, grid)), grid)
            if lower_features is not None:
                features = features + lower_features
            decode_grid = patch_grid(self.levels[max(index - 1, 0)])  # the next level up's patches
            lower_output = merge_patches(self.decoders[index](split_patches(features, decode_grid)), decode_grid)
            lower_features = features
        restored = padded + lower_output
        return restored[..., :height, :width].contiguous()
