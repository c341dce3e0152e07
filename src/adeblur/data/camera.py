"""What a camera does to a blurred scene after the optics: response curve, clipped highlights, JPEG.

Pure PyTorch and batched, so the synthesisers of :mod:`adeblur.data.synth` can run them on the training
device (docs/synthetic-blur.md, "Camera pipeline"):

- :func:`to_linear`, :func:`from_linear`: a power-law camera response ``encoded = linear^(1/gamma)``,
  one gamma per image (real responses differ between cameras; a range of gammas covers them);
- :func:`boost_highlights`: makes near-white pixels brighter than white in linear light, so that after
  blurring and clipping the streaks of lamps and reflections saturate, as they do in night shots;
- :func:`jpeg_compress`: baseline JPEG (YCbCr, 4:2:0 chroma, 8x8 DCT, the IJG quantisation tables
  scaled by quality as libjpeg scales them), per-image quality.

Random choices are made by the callers (:mod:`adeblur.data.synth`); these functions are deterministic.

>>> import torch
>>> images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
>>> out = jpeg_compress(images, torch.tensor([30.0, 95.0]))
>>> out.shape, bool(((out - images).abs().mean((1, 2, 3)) > 0).all())
(torch.Size([2, 3, 20, 20]), True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["boost_highlights", "from_linear", "jpeg_compress", "jpeg_quantisation_tables", "to_linear"]

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance): the IJG's base tables at quality 50.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
# JFIF's full-range BT.601 conversion (rows: Y, Cb, Cr; Cb and Cr are offset by 128 after it).
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)


def _per_image(value: float | torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A number or a ``(B,)`` tensor as a ``(B, 1, 1, 1)`` tensor on the images' device."""
    value = torch.as_tensor(value, dtype=images.dtype, device=images.device)
    if value.ndim == 0:
        value = value.expand(images.shape[0])
    if value.shape != (images.shape[0],):
        raise ValueError(f"expected a number or a ({images.shape[0]},) tensor, got shape {tuple(value.shape)}")
    return value.view(-1, 1, 1, 1)


def to_linear(images: torch.Tensor, gamma: float | torch.Tensor = 2.2) -> torch.Tensor:
    """Encoded values in [0, 1] -> linear intensities, ``x^gamma`` (``gamma``: a number or ``(B,)``).

    >>> to_linear(torch.full((1, 1, 1, 1), 0.5), 2.0).item()
    0.25
    """
    if not isinstance(gamma, torch.Tensor) and gamma == 1:
        return images
    return images.clamp(0, 1) ** _per_image(gamma, images)


def from_linear(images: torch.Tensor, gamma: float | torch.Tensor = 2.2) -> torch.Tensor:
    """Linear intensities -> encoded values, ``clip(x, 0, 1)^(1/gamma)``: what exceeds white saturates.

    >>> from_linear(torch.full((1, 1, 1, 1), 4.0), 2.0).item()
    1.0
    """
    if not isinstance(gamma, torch.Tensor) and gamma == 1:
        return images.clamp(0, 1)
    return images.clamp(0, 1) ** (1 / _per_image(gamma, images))


def boost_highlights(
    linear: torch.Tensor, encoded: torch.Tensor, gain: float | torch.Tensor, threshold: float = 0.9
) -> torch.Tensor:
    """Scale linear intensities up by up to ``gain`` where the encoded image is near white.

    The factor is ``1 + (gain - 1) * w`` with ``w = clip((max_channel(encoded) - threshold) / (1 - threshold),
    0, 1)``: 1 below ``threshold``, ``gain`` at white. A stored photo clips lamps, the sky and specular
    reflections at 1; their true radiance is often several times brighter, which is why their blur streaks
    are saturated in real photos. Boosting them before the blur and clipping after it
    (:func:`from_linear`) reproduces that; the sharp image itself only gets its near-white pixels
    pushed to white.

    Args:
        linear: ``(B, C, H, W)`` linear intensities.
        encoded: the same image encoded (it decides where the highlights are).
        gain: a number or ``(B,)``, at least 1 (1 = unchanged).
        threshold: encoded value where the boost starts, in [0, 1).

    >>> lin = torch.tensor([0.5, 1.0]).view(1, 1, 1, 2)
    >>> boost_highlights(lin, lin, 4.0).flatten().tolist()
    [0.5, 4.0]
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"boost_highlights: threshold must be in [0, 1), got {threshold}")
    gain = _per_image(gain, linear)
    if bool((gain < 1).any()):
        raise ValueError("boost_highlights: gain must be at least 1")
    weight = ((encoded.amax(dim=1, keepdim=True) - threshold) / (1 - threshold)).clamp(0, 1)
    return linear * (1 + (gain - 1) * weight)


def jpeg_quantisation_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's tables for qualities ``(B,)`` in [1, 100]: luminance and chrominance, each ``(B, 8, 8)``.

    Quality q scales the Annex K tables by ``5000 / q`` percent below 50 and ``200 - 2 q`` percent from
    50 on, rounds, and clips to [1, 255] (baseline JPEG).

    >>> luma, chroma = jpeg_quantisation_tables(torch.tensor([50.0, 100.0]))
    >>> luma[0, 0, 0].item(), luma[1].max().item()
    (16.0, 1.0)
    """
    quality = quality.clamp(1, 100)
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality).floor()
    tables = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        base = torch.tensor(base, dtype=quality.dtype, device=quality.device)
        tables.append(((base * scale.view(-1, 1, 1) + 50) / 100).floor().clamp(1, 255))
    return tables[0], tables[1]


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II: ``D[u, x] = a(u) cos((2x + 1) u pi / 16)``; JPEG's 2-D DCT is
    ``D @ block @ D.T``."""
    u = torch.arange(8, dtype=torch.float64).view(-1, 1)
    x = torch.arange(8, dtype=torch.float64).view(1, -1)
    matrix = torch.cos((2 * x + 1) * u * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] = math.sqrt(1 / 8)
    return matrix.to(dtype=dtype, device=device)


def _code_blocks(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Quantise and restore a ``(B, H, W)`` plane (H, W multiples of 8, level-shifted) block by block."""
    batch, height, width = plane.shape
    blocks = plane.view(batch, height // 8, 8, width // 8, 8).permute(0, 1, 3, 2, 4)  # (B, by, bx, 8, 8)
    coefficients = dct @ blocks @ dct.T
    table = table.view(batch, 1, 1, 8, 8)
    restored = dct.T @ (torch.round(coefficients / table) * table) @ dct
    return restored.permute(0, 1, 3, 2, 4).reshape(batch, height, width)


def jpeg_compress(images: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
    """Encode and decode as baseline JPEG: ``(B, C, H, W)`` in [0, 1] -> the decoded image, 8-bit levels.

    Colour images (C = 3) are converted to YCbCr (JFIF), the chroma planes averaged over 2x2 pixels
    (4:2:0, the default of libjpeg and Pillow), each plane padded by repeating its edge to whole 8x8
    blocks, transformed by the 8x8 DCT, quantised with :func:`jpeg_quantisation_tables`, and restored;
    chroma is brought back to full size by bilinear interpolation (libjpeg's "fancy" upsampling is the
    same triangle filter). Grey images (C = 1) are a single luminance plane. What differs from libjpeg:
    floating-point instead of integer DCTs and colour conversion (tests compare with Pillow's codec).

    Args:
        images: ``(B, 1 or 3, H, W)`` in [0, 1].
        quality: a number or ``(B,)``, 1 (worst) to 100 (best).

    >>> x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    >>> float((jpeg_compress(x, 100) - x).abs().max()) < 0.02
    True
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"jpeg_compress: images must be (B, 1 or 3, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    quality = _per_image(quality, images).view(-1).to(work)
    luma_table, chroma_table = jpeg_quantisation_tables(quality)
    dct = _dct_matrix(work, images.device)
    values = images.to(work).clamp(0, 1) * 255

    def coded(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, h, w)
        h, w = plane.shape[-2:]
        padded = F.pad(plane[:, None], (0, -w % 8, 0, -h % 8), mode="replicate")[:, 0]
        return _code_blocks(padded - 128, table, dct)[:, :h, :w] + 128

    if channels == 1:
        out = coded(values[:, 0], luma_table)[:, None]
    else:
        ycbcr = torch.einsum("ij,bjhw->bihw", torch.tensor(_RGB_TO_YCBCR, dtype=work, device=images.device), values)
        ycbcr[:, 1:] += 128
        luma = coded(ycbcr[:, 0], luma_table)
        # 4:2:0: chroma on whole 2x2 cells (the edge repeated when a side is odd).
        chroma = F.pad(ycbcr[:, 1:], (0, width % 2, 0, height % 2), mode="replicate")
        chroma = F.avg_pool2d(chroma, 2)
        restored = [coded(chroma[:, c], chroma_table) for c in range(2)]
        chroma = torch.stack(restored, dim=1)
        full = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)[..., :height, :width]
        cb, cr = full[:, 0] - 128, full[:, 1] - 128
        out = torch.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], dim=1)
    out = torch.round(out.clamp(0, 255)) / 255
    return out.to(images.dtype)
