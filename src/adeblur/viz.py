"""Pictures of what a deblurring model predicts: blur-mask overlays, motion fields, heatmaps, comparisons.

Every function takes float tensors and returns a (3, H, W) RGB tensor in [0, 1] on the input's device
(the images ``adeblur.io.write_image`` saves). Images are (3, H, W) or grey (1, H, W); maps are
(1, H, W) (masks, probabilities) or (2, H, W) (displacements in pixels, channel 0 = x rightwards,
channel 1 = y downwards); a leading batch dimension of one, as ``adeblur.engine.infer.restore``
returns them, is accepted everywhere. Images are clamped to [0, 1] first (model outputs are not).

* :func:`mask_overlay`: tint the blurred region, outline its border.
* :func:`flow_to_color` / :func:`color_wheel`: the Middlebury colour coding of Baker et al. 2011
  ("A Database and Evaluation Methodology for Optical Flow", IJCV): hue = direction, saturation =
  magnitude, white = no motion; and its legend.
* :func:`motion_arrows`: sparse arrows from grid points to their exposure-start and -end positions.
* :func:`heatmap`: one-channel values through a matplotlib colour map.
* :func:`side_by_side`: images in a row, optionally labelled.
* :func:`visualise_maps`: all of the above for the maps ``restore(..., return_maps=True)`` returns.

See ``docs/visualise.md``.

>>> import torch
>>> image, mask = torch.full((3, 8, 8), 0.5), torch.zeros(1, 8, 8)
>>> mask[:, 2:6, 2:6] = 1
>>> overlay = mask_overlay(image, mask, outline=False)
>>> overlay.shape, bool(torch.equal(overlay[:, 0, 0], image[:, 0, 0]))
(torch.Size([3, 8, 8]), True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from adeblur.errors import ConfigError

__all__ = [
    "color_wheel",
    "flow_to_color",
    "heatmap",
    "mask_overlay",
    "motion_arrows",
    "side_by_side",
    "visualise_maps",
]

Color = tuple[float, float, float]

#: Middlebury colour wheel (Baker et al. 2011; Scharstein's colorcode.cpp, Sun's computeColor.m): the
#: hue circle red -> yellow -> green -> cyan -> blue -> magenta -> red in segments of 15, 6, 4, 11,
#: 13 and 6 colours (55 in all), more colours where the eye tells hues apart better.
_HUE_CORNERS = ((255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255), (255, 0, 255))
_SEGMENT_LENGTHS = (15, 6, 4, 11, 13, 6)
#: Opacity of the black rim drawn one pixel around motion arrows.
_ARROW_RIM_OPACITY = 0.6


def _planes(tensor: Tensor, name: str, channels: tuple[int, ...]) -> Tensor:
    """(C, H, W) or (1, C, H, W) floating-point -> (C, H, W), C one of ``channels``."""
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 3 or tensor.shape[0] not in channels:
        allowed = " or ".join(str(c) for c in channels)
        raise ValueError(f"{name} must be ({allowed}, H, W) or (1, {allowed}, H, W), got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    return tensor


def _rgb(image: Tensor, name: str = "image") -> Tensor:
    """(3 or 1, H, W) [or batched by one] -> (3, H, W) clamped to [0, 1]."""
    image = _planes(image, name, (1, 3)).clamp(0, 1)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _color(color: Sequence[float], name: str, like: Tensor) -> Tensor:
    """An RGB triple in [0, 1] -> (3, 1, 1) tensor with ``like``'s device and dtype."""
    if len(color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in color):
        raise ValueError(f"{name} must be three numbers in [0, 1], got {tuple(color)!r}")
    return torch.tensor([float(c) for c in color], dtype=like.dtype, device=like.device).view(3, 1, 1)


def _mask_like(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(1, h, w) mask [or batched by one] -> (1, H, W), nearest-neighbour resized when the sizes differ."""
    mask = _planes(mask, "mask", (1,))
    if tuple(mask.shape[-2:]) != size:
        mask = F.interpolate(mask[None].float(), size=size, mode="nearest")[0].to(mask.dtype)
    return mask


def mask_overlay(
    image: Tensor,
    mask: Tensor,
    *,
    color: Color = (1.0, 0.2, 0.2),
    alpha: float = 0.45,
    outline: bool = True,
    outline_width: int = 2,
) -> Tensor:
    """Tint ``image`` where ``mask`` is set: ``image + alpha * mask * (color - image)``, plus an outline.

    Args:
        image: (3, H, W) or grey (1, H, W).
        mask: (1, h, w) blur mask in {0, 1} (soft values in [0, 1] tint proportionally); resized to
            (H, W) by nearest neighbour when its size differs.
        color: RGB tint in [0, 1].
        alpha: opacity of the tint at mask = 1.
        outline: paint the mask's border (its pixels with ``mask > 0.5`` within ``outline_width`` of
            an unmasked pixel; the image edge is not a border) in ``color``, fully opaque.
        outline_width: border thickness in pixels.

    Returns:
        (3, H, W) in [0, 1]. Pixels with mask 0 (and off the outline) keep the (clamped) image's values
        exactly.

    >>> image, mask = torch.zeros(3, 5, 5), torch.zeros(1, 5, 5)
    >>> mask[:, 1:4, 1:4] = 1
    >>> overlay = mask_overlay(image, mask, color=(1.0, 0.0, 0.0), alpha=0.5, outline_width=1)
    >>> overlay[0, 2, 2].item(), overlay[0, 1, 1].item(), overlay[0, 0, 0].item()  # inside, border, outside
    (0.5, 1.0, 0.0)
    """
    rgb = _rgb(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if outline_width < 1:
        raise ValueError(f"outline_width must be at least 1, got {outline_width}")
    size = (rgb.shape[-2], rgb.shape[-1])
    mask = _mask_like(mask, size).to(rgb.dtype).clamp(0, 1)
    tint = _color(color, "color", rgb)
    overlay = torch.lerp(rgb, tint.expand_as(rgb), mask * alpha)
    if outline:
        inside = (mask > 0.5).to(rgb.dtype)
        window = 2 * outline_width + 1
        # erosion = 1 - dilation of the complement; replicate padding: the image edge is no border
        outside = F.pad(1 - inside[None], (outline_width,) * 4, mode="replicate")
        eroded = 1 - F.max_pool2d(outside, window, stride=1)[0]
        overlay = torch.where((inside - eroded) > 0.5, tint, overlay)
    return overlay


@functools.lru_cache(maxsize=None)
def _middlebury_wheel() -> Tensor:
    """The 55 colours of the Middlebury wheel, (55, 3) in [0, 1] (integer levels / 255, as the original)."""
    rows = []
    for corner, length in enumerate(_SEGMENT_LENGTHS):
        start = torch.tensor(_HUE_CORNERS[corner])
        end = torch.tensor(_HUE_CORNERS[(corner + 1) % len(_HUE_CORNERS)])
        step = (255 * torch.arange(length)) // length  # floor(255 * i / n), rising channel
        rows.append(start + (end - start) // 255 * step[:, None])
    return torch.cat(rows).double() / 255


def flow_to_color(displacement: Tensor, *, max_magnitude: float | None = None) -> Tensor:
    """Colour-code a displacement field with the Middlebury wheel (Baker et al. 2011).

    Convention (as the Middlebury ``computeColor``): x points right, y points down (image
    coordinates); the hue says the direction, the saturation the length relative to
    ``max_magnitude``: zero motion is white, a vector of length ``max_magnitude`` the fully
    saturated wheel colour. Right is red, down yellow-orange, left cyan-blue, up blue-violet. Vectors
    longer than ``max_magnitude`` get the saturated colour darkened to 75 %; non-finite vectors black.

    Args:
        displacement: (2, H, W) in pixels, channel 0 = x (rightwards), channel 1 = y (downwards).
        max_magnitude: the length drawn fully saturated; default the field's largest length
            (a field of zeros is all white).

    Returns:
        (3, H, W) in [0, 1], the displacement's dtype and device.

    >>> right = torch.tensor([1.0, 0.0]).view(2, 1, 1)
    >>> [round(v, 3) for v in flow_to_color(right).flatten().tolist()]  # red
    [1.0, 0.0, 0.0]
    >>> flow_to_color(torch.zeros(2, 1, 1)).flatten().tolist()  # still: white
    [1.0, 1.0, 1.0]
    """
    flow = _planes(displacement, "displacement", (2,))
    if max_magnitude is not None and not max_magnitude > 0:
        raise ValueError(f"max_magnitude must be positive, got {max_magnitude}")
    work_dtype = torch.promote_types(flow.dtype, torch.float32)
    finite = torch.isfinite(flow).all(0)
    u, v = torch.where(finite, flow.to(work_dtype), 0).unbind(0)
    radius = torch.hypot(u, v)
    scale = float(radius.max()) if max_magnitude is None else float(max_magnitude)
    radius = radius / (scale if scale > 0 else 1.0)
    wheel = _middlebury_wheel().to(device=flow.device, dtype=work_dtype)
    count = wheel.shape[0]
    position = (torch.atan2(-v, -u) / math.pi + 1) / 2 * (count - 1)  # angle in [-1, 1] -> [0, 54]
    first = position.floor().long().clamp_(0, count - 1)
    fraction = (position - first).unsqueeze(0)
    color = (1 - fraction) * wheel[first].permute(2, 0, 1) + fraction * wheel[(first + 1) % count].permute(2, 0, 1)
    color = torch.where(radius <= 1, 1 - radius * (1 - color), 0.75 * color)  # saturation grows with length
    return (color * finite).to(flow.dtype)


def color_wheel(size: int = 64) -> Tensor:
    """Legend of :func:`flow_to_color`: a disc whose pixel at offset (x, y) from the centre shows (x, y).

    The rim shows vectors of length ``max_magnitude``; outside the disc is white.

    Returns:
        (3, size, size) float32 in [0, 1].

    >>> legend = color_wheel(33)
    >>> legend.shape, legend[:, 16, 16].tolist(), legend[:, 0, 0].tolist()  # centre, corner
    (torch.Size([3, 33, 33]), [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    """
    if size < 2:
        raise ValueError(f"size must be at least 2, got {size}")
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    radius = (size - 1) / 2
    legend = flow_to_color(torch.stack((x, y)), max_magnitude=radius)
    return torch.where(torch.hypot(x, y) > radius, 1.0, legend)


def _draw_arrow(draw: ImageDraw.ImageDraw, x: float, y: float, dx: float, dy: float, width: int, grow: int) -> None:
    """A line from (x, y) to (x + dx, y + dy) with a triangular head at the tip, ``grow`` pixels fatter."""
    length = math.hypot(dx, dy)
    if length < 0.5:
        return
    tip_x, tip_y = x + dx, y + dy
    draw.line((x, y, tip_x, tip_y), fill=255, width=width + 2 * grow)
    head = min(length, 3.0 * width + 2.0)
    unit_x, unit_y = dx / length, dy / length
    base_x, base_y = tip_x - head * unit_x, tip_y - head * unit_y
    side_x, side_y = -unit_y * head / 2, unit_x * head / 2  # half the head's width, across the arrow
    corners = [(tip_x, tip_y), (base_x + side_x, base_y + side_y), (base_x - side_x, base_y - side_y)]
    draw.polygon(corners, fill=255, outline=255 if grow else None, width=max(1, grow))


def motion_arrows(
    image: Tensor,
    displacement_start: Tensor,
    displacement_end: Tensor,
    *,
    spacing: int = 32,
    mask: Tensor | None = None,
    start_color: Color = (0.1, 0.55, 1.0),
    end_color: Color = (1.0, 0.85, 0.0),
    line_width: int | None = None,
) -> Tensor:
    """Draw, at grid points every ``spacing`` pixels, arrows to the exposure-start and -end positions.

    M2AENet's intra-motion analyser predicts, per pixel, where the scene point seen there at
    mid-exposure was at the start (``displacement_start``, o(t_0)) and at the end
    (``displacement_end``, o(t_{N-1})) of the exposure. From each grid point ``(spacing // 2 + i *
    spacing, spacing // 2 + j * spacing)`` one arrow goes to ``point + displacement_start`` (in
    ``start_color``) and one to ``point + displacement_end`` (in ``end_color``, drawn on top), both
    over a one-pixel dark rim (60 % black) that keeps them visible on any background. Arrows shorter
    than half a pixel are not drawn.

    Args:
        image: (3, H, W) or grey (1, H, W) background.
        displacement_start, displacement_end: (2, H, W) in pixels of the image (x right, y down).
        spacing: grid step in pixels.
        mask: optional (1, h, w) blur mask (nearest-resized to (H, W)): arrows only at grid points
            where it is set.
        start_color, end_color: RGB in [0, 1].
        line_width: in pixels; default ``max(1, spacing // 16)``.

    Returns:
        (3, H, W) in [0, 1]; pixels no arrow touches keep the (clamped) image's values exactly.

    >>> image = torch.zeros(3, 32, 32)
    >>> start = torch.zeros(2, 32, 32); start[0] = -6  # started 6 px to the left
    >>> arrows = motion_arrows(image, start, -start, spacing=16)
    >>> bool(arrows[:, 8, 8 - 6:8].sum() > 0), bool(arrows[:, 0].sum() == 0)  # on the grid row, off it
    (True, True)
    """
    rgb = _rgb(image)
    height, width = rgb.shape[-2:]
    fields = []
    for name, field in (("displacement_start", displacement_start), ("displacement_end", displacement_end)):
        field = _planes(field, name, (2,))
        if tuple(field.shape[-2:]) != (height, width):
            raise ValueError(f"{name} must be (2, {height}, {width}) like the image, got shape {tuple(field.shape)}")
        fields.append(field)
    if spacing < 1:
        raise ValueError(f"spacing must be at least 1, got {spacing}")
    if line_width is None:
        line_width = max(1, spacing // 16)
    elif line_width < 1:
        raise ValueError(f"line_width must be at least 1, got {line_width}")
    rows = torch.arange(spacing // 2, height, spacing, device=rgb.device)
    cols = torch.arange(spacing // 2, width, spacing, device=rgb.device)
    grid_y, grid_x = (g.flatten() for g in torch.meshgrid(rows, cols, indexing="ij"))
    if mask is not None:
        keep = _mask_like(mask, (height, width))[0, grid_y, grid_x] > 0.5
        grid_y, grid_x = grid_y[keep], grid_x[keep]
    vectors = [field[:, grid_y, grid_x].t().double().cpu().tolist() for field in fields]
    points = torch.stack((grid_x, grid_y), 1).cpu().tolist()

    def coverage(fields_vectors: list[list[list[float]]], grow: int) -> Tensor:
        layer = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(layer)
        for field_vectors in fields_vectors:
            for (x, y), (dx, dy) in zip(points, field_vectors):
                if math.isfinite(dx) and math.isfinite(dy):
                    _draw_arrow(draw, x, y, dx, dy, line_width, grow)
        return torch.from_numpy(np.array(layer)).to(device=rgb.device, dtype=rgb.dtype) / 255

    # a dark rim under both arrows keeps them visible on any background, then the start and end arrows
    out = rgb * (1 - _ARROW_RIM_OPACITY * coverage(vectors, 1))
    for field_vectors, color, name in zip(vectors, (start_color, end_color), ("start_color", "end_color")):
        out = torch.lerp(out, _color(color, name, rgb).expand_as(out), coverage([field_vectors], 0))
    return out


@functools.lru_cache(maxsize=None)
def _colormap_table(name: str) -> Tensor:
    """(256, 3) float64 RGB samples of the matplotlib colour map ``name``."""
    import matplotlib  # deferred: only heatmaps need it, and it takes a moment to import

    if name not in matplotlib.colormaps:
        raise ConfigError(f"unknown colormap {name!r}; use a matplotlib colour map name such as 'viridis' or 'magma'")
    samples = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float64))


def heatmap(
    values: Tensor, *, vmin: float | None = None, vmax: float | None = None, colormap: str = "viridis"
) -> Tensor:
    """Colour one-channel values with a matplotlib colour map.

    ``(values - vmin) / (vmax - vmin)``, clamped to [0, 1], picks one of 256 colours of
    ``colormap`` (viridis: dark blue at vmin, yellow at vmax). Non-finite values take vmin's colour.

    Args:
        values: (1, H, W).
        vmin, vmax: the values shown at the two ends; default the finite minimum and maximum
            (a constant map shows vmin's colour everywhere).
        colormap: any name in ``matplotlib.colormaps``.

    Returns:
        (3, H, W) in [0, 1], the values' dtype and device.

    Raises:
        ConfigError: unknown colour map.

    >>> ramp = torch.linspace(0, 1, 5).view(1, 1, 5)
    >>> colors = heatmap(ramp, colormap="gray")
    >>> [round(v, 2) for v in colors[0, 0].tolist()]
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    plane = _planes(values, "values", (1,))[0]
    table = _colormap_table(colormap).to(device=plane.device)
    finite = torch.isfinite(plane)
    data = plane.double()
    if vmin is None or vmax is None:
        present = data[finite]
        low = float(present.min()) if present.numel() else 0.0
        high = float(present.max()) if present.numel() else 1.0
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    if vmax < vmin:
        raise ValueError(f"vmax ({vmax}) must not be below vmin ({vmin})")
    spread = vmax - vmin
    normalised = ((data - vmin) / spread).clamp(0, 1) if spread > 0 else torch.zeros_like(data)
    index = torch.where(finite, normalised, 0).mul(255).round().long()
    return table[index].permute(2, 0, 1).to(plane.dtype)


def side_by_side(
    images: Sequence[Tensor],
    labels: Sequence[str] | None = None,
    *,
    gap: int = 4,
    background: float = 1.0,
    font_size: int | None = None,
) -> Tensor:
    """Images in a row, top-aligned, ``gap`` pixels apart, with optional labels above each.

    Args:
        images: (3, H_i, W_i) or grey (1, H_i, W_i) tensors (converted to the first one's dtype and
            device); different heights are padded at the bottom.
        labels: one per image, drawn in black with PIL's default font in a strip above the images,
            clipped to the image's width.
        gap: pixels between images (and the fill of the padding) in ``background``.
        background: grey level in [0, 1] of the gaps, padding and label strip.
        font_size: label size in pixels; default ``clamp(max_height // 20, 12, 32)``.

    Returns:
        (3, S + max H_i, sum W_i + gap * (n - 1)) in [0, 1], S the label strip's height (0 without
        labels).

    >>> row = side_by_side([torch.zeros(3, 10, 20), torch.ones(1, 8, 5)], gap=2)
    >>> row.shape
    torch.Size([3, 10, 27])
    """
    if len(images) == 0:
        raise ValueError("side_by_side needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    if gap < 0:
        raise ValueError(f"gap must be non-negative, got {gap}")
    if not 0.0 <= background <= 1.0:
        raise ValueError(f"background must be in [0, 1], got {background}")
    first = _rgb(images[0], "images[0]")
    planes = [first] + [
        _rgb(image, f"images[{i}]").to(device=first.device, dtype=first.dtype) for i, image in enumerate(images[1:], 1)
    ]
    height = max(p.shape[1] for p in planes)
    total_width = sum(p.shape[2] for p in planes) + gap * (len(planes) - 1)
    font = strip = None
    if labels is not None:
        font = ImageFont.load_default(size=font_size or min(32, max(12, height // 20)))
        top, bottom = font.getbbox("Ag")[1::2]
        padding = max(2, (bottom - top) // 4)
        strip = bottom + 2 * padding
    strip_height = 0 if strip is None else strip
    canvas = first.new_full((3, strip_height + height, total_width), background)
    left = 0
    for index, plane in enumerate(planes):
        canvas[:, strip_height : strip_height + plane.shape[1], left : left + plane.shape[2]] = plane
        if labels is not None and font is not None:
            text = Image.new("L", (plane.shape[2], strip_height), 0)
            ImageDraw.Draw(text).text((padding, padding), str(labels[index]), fill=255, font=font)
            ink = torch.from_numpy(np.array(text)).to(device=canvas.device, dtype=canvas.dtype) / 255
            canvas[:, :strip_height, left : left + plane.shape[2]] *= 1 - ink  # black text
        left += plane.shape[2] + gap
    return canvas


def visualise_maps(image: Tensor, maps: Mapping[str, Tensor], *, spacing: int | None = None) -> dict[str, Tensor]:
    """Render the maps of ``restore(..., return_maps=True)`` as images (what ``deblur --save-*`` writes).

    Known maps:

    * ``blur_mask`` -> ``"mask"``: :func:`mask_overlay` on ``image`` (``--save-mask``).
    * ``displacement_start`` and ``displacement_end`` -> ``"motion"``: :func:`flow_to_color` of
      ``displacement_end - displacement_start`` (the motion across the exposure, start to end,
      scaled to its largest length), and ``"arrows"``: :func:`motion_arrows` at the blurred grid
      points (all grid points without a ``blur_mask``) (``--save-motion``).
    * ``blur_probability`` -> ``"blur_probability"``: :func:`heatmap` over [0, 1].

    Every other map (SAPHNet's later) keeps its name and is drawn by its channels: 1 -> heatmap over
    its own range, 2 -> :func:`flow_to_color`, 3 -> shown as an image (clamped).

    Args:
        image: (3, H, W) or (1, 3, H, W), the image the maps belong to (the blurred input).
        maps: name -> (1 or B=1, C, H, W) map; masks may be at another resolution (resized).
        spacing: arrow grid step; default ``max(16, round(max(H, W) / 32))``.

    Returns:
        name -> (3, H_map, W_map) image in [0, 1].

    Raises:
        ValueError: a map with another number of channels.

    >>> maps = {"blur_mask": torch.ones(1, 1, 8, 8), "displacement_start": torch.zeros(1, 2, 8, 8),
    ...         "displacement_end": torch.ones(1, 2, 8, 8), "blur_probability": torch.rand(1, 1, 8, 8)}
    >>> sorted(visualise_maps(torch.rand(1, 3, 8, 8), maps))
    ['arrows', 'blur_probability', 'mask', 'motion']
    """
    rgb = _rgb(image)
    rendered: dict[str, Tensor] = {}
    mask = maps.get("blur_mask")
    if mask is not None:
        rendered["mask"] = mask_overlay(rgb, mask)
    start, end = maps.get("displacement_start"), maps.get("displacement_end")
    motion_pair = start is not None and end is not None
    if motion_pair:
        motion = _planes(end, "displacement_end", (2,)) - _planes(start, "displacement_start", (2,))
        rendered["motion"] = flow_to_color(motion)
        if spacing is None:
            spacing = max(16, round(max(rgb.shape[-2:]) / 32))
        rendered["arrows"] = motion_arrows(rgb, start, end, spacing=spacing, mask=mask)
    known = {"blur_mask"} | ({"displacement_start", "displacement_end"} if motion_pair else set())
    for name, value in maps.items():
        if name in known:
            continue
        channels = value.shape[-3] if value.ndim >= 3 else 0
        if name == "blur_probability":
            rendered[name] = heatmap(value, vmin=0.0, vmax=1.0)
        elif channels == 1:
            rendered[name] = heatmap(value)
        elif channels == 2:
            rendered[name] = flow_to_color(value)
        elif channels == 3:
            rendered[name] = _rgb(value, name)
        else:
            raise ValueError(
                f"map {name!r} has shape {tuple(value.shape)}; maps must have 1 (heatmap), 2 (displacement) "
                "or 3 (image) channels"
            )
    return rendered
