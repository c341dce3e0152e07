"""NAFNet (Chen et al. 2022, "Simple Baselines for Image Restoration"), the backbone of M2AENet.

A U-Net, top-down as the official architecture:

1. ``intro``: 3x3 conv, 3 -> ``width`` channels.
2. ``encoders[i]`` (``encoder_blocks[i]`` NAFBlocks), each followed by ``downs[i]``: a 2x2 stride-2
   conv that halves the resolution and doubles the channels.
3. ``middle_blks``: NAFBlocks at the lowest resolution.
4. ``ups[i]`` (1x1 conv doubling the channels, bias-free, then PixelShuffle(2): twice the resolution,
   half the channels), plus the matching encoder output (additive skip), then ``decoders[i]``.
5. ``ending``: 3x3 conv back to 3 channels, added to the input image (global residual).

Inputs of any size: the image is zero-padded on the right and bottom to a multiple of
``size_multiple = 2 ** len(encoder_blocks)`` and the output cropped back, as the official code does.
Tilers that want no padding choose tile sizes that are multiples of ``size_multiple``. The output is
not clamped (training needs the raw values); clamp to [0, 1] before saving.

``nafnet`` in the registry is the GoPro configuration: width 32, encoder [1, 1, 1, 28], middle 1,
decoder [1, 1, 1, 1] (17.11 M parameters). Parameter names match the official code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adeblur.models.blocks import NAFBlock

__all__ = ["NAFNet", "check_image_batch", "pad_to_multiple"]


def pad_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Zero-pad (B, C, H, W) on the right and bottom so that H and W are multiples of ``multiple``.

    >>> import torch
    >>> pad_to_multiple(torch.ones(1, 3, 5, 17), 16).shape
    torch.Size([1, 3, 16, 32])
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) image batch, got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    return F.pad(image, (0, -width % multiple, 0, -height % multiple))


def check_image_batch(image: Tensor, channels: int) -> None:
    """Raise ValueError unless ``image`` is a floating-point (B, channels, H, W) tensor."""
    if image.ndim != 4 or image.shape[1] != channels:
        raise ValueError(f"expected a (B, {channels}, H, W) image batch, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"expected a floating-point image batch, got {image.dtype}")


class NAFNet(nn.Module):
    """NAFNet image restorer: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) (the input plus a learned residual).

    Args:
        width: channels after ``intro`` (doubles at every encoder stage).
        encoder_blocks: NAFBlocks per encoder stage (its length is the number of downsamplings).
        middle_blocks: NAFBlocks at the lowest resolution.
        decoder_blocks: NAFBlocks per decoder stage, coarse to fine; as long as ``encoder_blocks``.
        image_channels: channels of the input and output images.

    >>> import torch
    >>> model = NAFNet(width=8, encoder_blocks=(1, 1), middle_blocks=1, decoder_blocks=(1, 1))
    >>> model.size_multiple
    4
    >>> model(torch.rand(1, 3, 10, 13)).shape
    torch.Size([1, 3, 10, 13])
    """

    def __init__(
        self,
        width: int = 32,
        encoder_blocks: Sequence[int] = (1, 1, 1, 28),
        middle_blocks: int = 1,
        decoder_blocks: Sequence[int] = (1, 1, 1, 1),
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(encoder_blocks) != len(decoder_blocks):
            raise ValueError(
                f"encoder_blocks {tuple(encoder_blocks)} and decoder_blocks {tuple(decoder_blocks)} "
                "must have the same length"
            )
        self.image_channels = image_channels
        self.size_multiple = 2 ** len(encoder_blocks)
        self.intro = nn.Conv2d(image_channels, width, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = width
        for count in encoder_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(channels) for _ in range(count)]))
            self.downs.append(nn.Conv2d(channels, 2 * channels, 2, stride=2))
            channels *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(channels) for _ in range(middle_blocks)])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for count in decoder_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.PixelShuffle(2)))
            channels //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(channels) for _ in range(count)]))
        self.ending = nn.Conv2d(width, image_channels, 3, padding=1)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 3, H, W), any H and W (padded inside to ``size_multiple``)."""
        check_image_batch(image, self.image_channels)
        height, width = image.shape[-2:]
        padded = pad_to_multiple(image, self.size_multiple).contiguous(memory_format=torch.channels_last)
        x = self.intro(padded)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(up(x) + skip)
        restored = self.ending(x) + padded
        return restored[..., :height, :width].contiguous()
