"""Image files in and out: PNG, JPEG, TIFF, BMP and WebP as float32 ``(C, H, W)`` tensors in ``[0, 1]``.

:func:`read_image` returns the pixels plus an :class:`ImageInfo` that :func:`write_image` uses to write a
result back in the same format, channel layout and bit depth. :func:`to_rgb` / :func:`from_rgb` feed grey,
grey+alpha and RGBA images to RGB models and restore their layout afterwards.

Decoders: Pillow for everything it holds (all 8-bit modes, 16-bit grey TIFF, palettes, EXIF); pypng for
16-bit PNG and tifffile for 16-bit TIFF with several samples, which Pillow would truncate to 8 bits. The
file's bytes, not its extension, choose the decoder. Every problem with a file raises
:class:`~adeblur.errors.ImageError` with a one-line message naming the file. See ``docs/io.md``.

>>> import tempfile, torch
>>> folder = tempfile.TemporaryDirectory()
>>> ramp = torch.linspace(0, 1, 12).reshape(1, 3, 4)
>>> path = write_image(Path(folder.name) / "ramp.png", ramp, bit_depth=16)
>>> image, info = read_image(path)
>>> info.format, info.channels, info.bit_depth, (info.height, info.width)
('PNG', 1, 16, (3, 4))
>>> bool((image - ramp).abs().max() <= 0.5 / 65535)  # rounded to the nearest 16-bit level
True
>>> folder.cleanup()
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
import png
import tifffile
import torch
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin

from adeblur.errors import AdeblurError, ConfigError, ImageError, one_line

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMAT_BY_EXTENSION",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS_ENV",
    "ImageInfo",
    "RGBRestore",
    "from_rgb",
    "is_image_path",
    "list_images",
    "read_image",
    "read_image_size",
    "to_rgb",
    "write_image",
    "write_text",
]

FORMAT_BY_EXTENSION: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".webp": "WEBP",
}
IMAGE_EXTENSIONS: frozenset[str] = frozenset(FORMAT_BY_EXTENSION)

DEFAULT_MAX_PIXELS = 2**28
"""Largest ``width * height`` read by default (16384 x 16384; 4 GiB as float32 RGBA)."""
MAX_PIXELS_ENV = "ADEBLUR_MAX_PIXELS"
"""Environment variable that replaces :data:`DEFAULT_MAX_PIXELS` when ``max_pixels`` is not given."""

_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
_BT601_LUMA = (0.299, 0.587, 0.114)
_EXIF_ORIENTATION = 0x0112
_TIFF_ICC_PROFILE = 34675


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`read_image` learnt about a file, enough to write a result back the same way.

    Attributes:
        path: the file read (None for images that did not come from a file).
        format: ``"PNG"``, ``"JPEG"``, ``"TIFF"``, ``"BMP"`` or ``"WEBP"``, from the file's content.
        height, width: of the returned tensor (EXIF orientation applied).
        channels: 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) as returned; palettes are expanded to
            RGB, or RGBA when they carry transparency.
        bit_depth: 8 or 16 (1-, 2- and 4-bit sources count as 8).
        palette: the source was a palette image.
        icc_profile: the embedded ICC colour profile, or None.
        lossless: False for JPEG and lossy WebP sources.
    """

    path: Path | None
    format: str
    height: int
    width: int
    channels: int
    bit_depth: int = 8
    palette: bool = False
    icc_profile: bytes | None = None
    lossless: bool = True

    @property
    def has_alpha(self) -> bool:
        """Whether the last channel is alpha (``channels`` is 2 or 4)."""
        return self.channels in (2, 4)


@dataclass(frozen=True)
class RGBRestore:
    """How :func:`from_rgb` puts an RGB result back into the layout :func:`to_rgb` was given.

    ``channels`` is the original channel count; ``alpha`` the alpha channel kept aside, ``(1, H, W)`` or
    ``(B, 1, H, W)``, or None.
    """

    channels: int
    alpha: torch.Tensor | None


# --------------------------------------------------------------------------------------------------
# Paths


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has an image extension (case-insensitive); the file is not opened.

    >>> is_image_path("shot.JPG"), is_image_path("notes.txt")
    (True, False)
    """
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Not recursive; extensions are matched case-insensitively; hidden files (names starting with ``.``,
    such as macOS ``._photo.jpg`` resource forks) are skipped. A missing folder raises ImageError.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> for name in ["b.PNG", "a.jpg", "notes.txt", ".hidden.png"]:
    ...     _ = (Path(folder.name) / name).write_bytes(b"")
    >>> [path.name for path in list_images(folder.name)]
    ['a.jpg', 'b.PNG']
    >>> folder.cleanup()
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"cannot list images in {_quote(folder)}: not a folder")
    return sorted(
        entry
        for entry in folder.iterdir()
        if is_image_path(entry) and not entry.name.startswith(".") and entry.is_file()
    )


# --------------------------------------------------------------------------------------------------
# Reading


class _BadPixels(Exception):
    """A decodable file whose pixel format adeblur does not read; the message is the reason."""


@dataclass(frozen=True)
class _Header:
    format: str
    stored_width: int
    stored_height: int
    orientation: int
    icc_profile: bytes | None
    lossless: bool
    decode: Callable[[], tuple[np.ndarray, int, bool]]  # -> (H, W[, C]) uint8/uint16, bit depth, palette


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = None
) -> tuple[torch.Tensor, ImageInfo]:
    """Read an image file as a float32 ``(C, H, W)`` tensor in ``[0, 1]`` and its :class:`ImageInfo`.

    ``C`` is 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA). 8-bit data is divided by 255, 16-bit data by
    65535 (never truncated to 8 bits); 1-, 2- and 4-bit data is read as 8-bit. The EXIF orientation is
    applied. Only the first frame of a multi-page TIFF or animated WebP is read.

    Args:
        path: the file; its content, not its extension, decides how it is decoded.
        max_pixels: refuse images with more than this many pixels, checked from the header before any
            pixel is decoded. Default: the ``ADEBLUR_MAX_PIXELS`` environment variable, else
            :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ImageError: the file is missing, empty, truncated, corrupt, not a PNG/JPEG/TIFF/BMP/WebP, has a
            pixel format adeblur does not read (e.g. float TIFF), zero size or too many pixels.

    >>> import tempfile, torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> rgba = torch.rand(4, 5, 6)
    >>> image, info = read_image(write_image(Path(folder.name) / "x.png", rgba))
    >>> image.shape, image.dtype, info.has_alpha
    (torch.Size([4, 5, 6]), torch.float32, True)
    >>> folder.cleanup()
    """
    path = Path(path)
    limit = _resolve_max_pixels(max_pixels)
    with _open_image_file(path) as fp, _pillow_limit_lifted():
        header = _read_header(path, fp)
        _check_pixel_count(path, header, limit)
        try:
            pixels, bit_depth, palette = header.decode()
        except _BadPixels as err:
            raise _read_error(path, str(err)) from err
        except Exception as err:  # Pillow, pypng and tifffile raise a zoo of types on bad data
            raise _read_error(path, f"corrupt or truncated {header.format} data ({err})") from err
    pixels = _apply_orientation(pixels, header.orientation)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    scaled = pixels.astype(np.float32) / float(2**bit_depth - 1)
    image = torch.from_numpy(scaled).permute(2, 0, 1).contiguous()
    info = ImageInfo(
        path=path,
        format=header.format,
        height=image.shape[1],
        width=image.shape[2],
        channels=image.shape[0],
        bit_depth=bit_depth,
        palette=palette,
        icc_profile=header.icc_profile,
        lossless=header.lossless,
    )
    return image, info


def read_image_size(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image as :func:`read_image` would return it, from the header only.

    A 90-degree EXIF orientation swaps the stored sizes. Raises the same ImageError as :func:`read_image`
    for a missing, empty, unrecognised or oversized file (``max_pixels`` as there); damage past the header
    is only found by :func:`read_image`.

    >>> import tempfile, torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> read_image_size(write_image(Path(folder.name) / "x.jpg", torch.rand(3, 4, 7)))
    (4, 7)
    >>> folder.cleanup()
    """
    path = Path(path)
    limit = _resolve_max_pixels(max_pixels)
    with _open_image_file(path) as fp, _pillow_limit_lifted():
        header = _read_header(path, fp)
    _check_pixel_count(path, header, limit)
    if header.orientation >= 5:  # 5..8 turn the image by 90 degrees
        return header.stored_width, header.stored_height
    return header.stored_height, header.stored_width


def _resolve_max_pixels(max_pixels: int | None) -> int:
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(text)
        except ValueError:
            max_pixels = 0
        if max_pixels <= 0:
            raise ConfigError(f"{MAX_PIXELS_ENV} must be a positive integer, got {text!r}")
        return max_pixels
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return max_pixels


_pillow_limit_lock = threading.Lock()
_pillow_limit_users = 0
_pillow_limit_saved: int | None = None


@contextlib.contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Switch Pillow's decompression-bomb check off while adeblur reads (adeblur checks its own limit).

    Pillow warns above ``PIL.Image.MAX_IMAGE_PIXELS`` and refuses above twice that, when opening and
    again when loading a TIFF. The setting is restored when the last concurrent read ends.
    """
    global _pillow_limit_users, _pillow_limit_saved
    with _pillow_limit_lock:
        if _pillow_limit_users == 0:
            _pillow_limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pillow_limit_users += 1
    try:
        yield
    finally:
        with _pillow_limit_lock:
            _pillow_limit_users -= 1
            if _pillow_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit_saved


@contextlib.contextmanager
def _open_image_file(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for reading, or raise an ImageError naming what is wrong with it."""
    try:
        file = open(path, "rb")  # noqa: SIM115 -- closed by the with below
    except FileNotFoundError as err:
        raise _read_error(path, "no such file") from err
    except IsADirectoryError as err:
        raise _read_error(path, "is a directory") from err
    except OSError as err:
        raise _read_error(path, err.strerror or str(err)) from err
    with file:
        if os.fstat(file.fileno()).st_size == 0:
            raise _read_error(path, "the file is empty (0 bytes)")
        yield file


def _read_header(path: Path, fp: BinaryIO) -> _Header:
    """Identify the file by its first bytes and read its header (sizes, orientation, decoder)."""
    magic = fp.read(16)
    fp.seek(0)
    if magic.startswith(b"\x89PNG\r\n\x1a\n"):
        image_format, reader = "PNG", _png_header
    elif magic.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        image_format, reader = "TIFF", _tiff_header
    elif magic.startswith(b"\xff\xd8\xff"):
        image_format, reader = "JPEG", _jpeg_header
    elif magic.startswith(b"BM"):
        image_format, reader = "BMP", _bmp_header
    elif magic.startswith(b"RIFF") and magic[8:12] == b"WEBP":
        image_format, reader = "WEBP", _webp_header
    else:
        raise _read_error(path, "not a PNG, JPEG, TIFF, BMP or WebP file")
    try:
        header = reader(fp)
    except _BadPixels as err:
        raise _read_error(path, str(err)) from err
    except Exception as err:
        raise _read_error(path, f"corrupt or truncated {image_format} file ({err})") from err
    if header.stored_width <= 0 or header.stored_height <= 0:
        raise _read_error(path, f"zero-size image ({header.stored_width}x{header.stored_height})")
    return header


def _check_pixel_count(path: Path, header: _Header, limit: int) -> None:
    count = header.stored_width * header.stored_height
    if count > limit:
        raise _read_error(
            path,
            f"{header.stored_width}x{header.stored_height} = {count} pixels exceeds the limit of {limit} "
            f"(pass max_pixels or set {MAX_PIXELS_ENV})",
        )


def _png_header(fp: BinaryIO) -> _Header:
    # Walk the chunk list (seeking over the data) for IHDR, eXIf and iCCP, wherever they are.
    fp.seek(8)
    width = height = bit_depth = -1
    exif = icc_profile = None
    while len(chunk_head := fp.read(8)) == 8:
        length, kind = struct.unpack(">I4s", chunk_head)
        if kind == b"IHDR":
            width, height, bit_depth = struct.unpack(">IIB", fp.read(9))
            fp.seek(length - 9 + 4, os.SEEK_CUR)
        elif kind in (b"eXIf", b"iCCP"):
            data = fp.read(length)
            fp.seek(4, os.SEEK_CUR)
            if kind == b"eXIf":
                exif = data
            else:  # profile name, NUL, compression method byte, zlib stream
                icc_profile = zlib.decompress(data[data.index(b"\x00") + 2 :])
        elif kind == b"IEND":
            break
        else:
            fp.seek(length + 4, os.SEEK_CUR)
    else:  # Pillow would accept a file cut after its pixel data
        raise ValueError("the file ends before its IEND chunk")
    if width < 0:
        raise ValueError("no IHDR chunk")
    orientation = _orientation_from_exif(exif)

    def decode() -> tuple[np.ndarray, int, bool]:
        fp.seek(0)
        if bit_depth == 16:  # Pillow would truncate colour and alpha to 8 bits
            return _decode_pypng(fp), 16, False
        return _decode_pillow(PngImagePlugin.PngImageFile(fp))

    return _Header("PNG", width, height, orientation, icc_profile, True, decode)


def _tiff_header(fp: BinaryIO) -> _Header:
    with tifffile.TiffFile(fp) as tif:
        page = tif.pages[0]
        tags = page.tags
        width, height = page.imagewidth, page.imagelength
        bits, samples = page.bitspersample, page.samplesperpixel
        sample_format = int(page.sampleformat)
        photometric = int(page.photometric)
        compression = page.compression
        orientation_tag = tags.get(_EXIF_ORIENTATION)
        icc_tag = tags.get(_TIFF_ICC_PROFILE)
    orientation = _valid_orientation(orientation_tag.value if orientation_tag is not None else 1)
    icc_profile = bytes(icc_tag.value) if icc_tag is not None else None
    if sample_format == 3:
        raise _BadPixels(f"{bits}-bit floating-point TIFF is not supported (only 8- and 16-bit integers)")
    if sample_format == 2:
        raise _BadPixels("signed-integer TIFF is not supported (only unsigned 8- and 16-bit)")
    if bits > 16:
        raise _BadPixels(f"{bits}-bit TIFF is not supported (only 8- and 16-bit)")

    def decode() -> tuple[np.ndarray, int, bool]:
        fp.seek(0)
        if bits == 16 and samples > 1:  # Pillow cannot hold 16-bit colour or grey+alpha
            return _decode_tifffile(fp, samples, photometric, compression), 16, False
        return _decode_pillow(TiffImagePlugin.TiffImageFile(fp))

    return _Header("TIFF", width, height, orientation, icc_profile, True, decode)


def _pillow_header(image_format: str, image: Image.Image, lossless: bool) -> _Header:
    orientation = _valid_orientation(image.getexif().get(_EXIF_ORIENTATION, 1))
    width, height = image.size
    icc_profile = image.info.get("icc_profile")
    return _Header(
        image_format, width, height, orientation, icc_profile, lossless, lambda: _decode_pillow(image)
    )


def _jpeg_header(fp: BinaryIO) -> _Header:
    return _pillow_header("JPEG", JpegImagePlugin.jpeg_factory(fp), lossless=False)


def _bmp_header(fp: BinaryIO) -> _Header:
    return _pillow_header("BMP", BmpImagePlugin.BmpImageFile(fp), lossless=True)


def _webp_header(fp: BinaryIO) -> _Header:
    # Lossless WebP stores its (first) bitstream in a "VP8L" chunk, lossy WebP in "VP8 ".
    fp.seek(12)
    lossless = False
    while len(chunk_head := fp.read(8)) == 8:
        kind, length = struct.unpack("<4sI", chunk_head)
        if kind in (b"VP8L", b"VP8 "):
            lossless = kind == b"VP8L"
            break
        fp.seek(length + (length & 1), os.SEEK_CUR)
    fp.seek(0)
    return _pillow_header("WEBP", WebPImagePlugin.WebPImageFile(fp), lossless=lossless)


def _decode_pillow(image: Image.Image) -> tuple[np.ndarray, int, bool]:
    image.load()  # a full decode: truncated data raises here (ImageFile.LOAD_TRUNCATED_IMAGES is False)
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16), 16, False
    palette = mode in ("P", "PA")
    if mode == "P":
        target = "RGBA" if image.has_transparency_data else "RGB"
    else:
        target = _PILLOW_MODE_TARGETS.get(mode, "")
    if not target:
        raise _BadPixels(f"unsupported pixel format (Pillow mode {mode})")
    if target != mode:
        image = image.convert(target)
    return np.asarray(image), 8, palette


# Pillow mode -> the mode whose pixels are returned. CMYK and YCbCr become RGB; premultiplied alpha
# ("La", "RGBa") is divided out; the padding byte of RGBX is dropped.
_PILLOW_MODE_TARGETS = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "La": "LA",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBX": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}


def _decode_pypng(fp: BinaryIO) -> np.ndarray:
    width, height, rows, info = png.Reader(file=fp).read()
    planes = info["planes"]
    pixels = np.stack([np.frombuffer(row, dtype=np.uint16) for row in rows])
    return pixels.reshape(height, width, planes)


def _decode_tifffile(fp: BinaryIO, samples: int, photometric: int, compression: int) -> np.ndarray:
    if (photometric, samples) not in {(1, 2), (2, 3), (2, 4)}:  # photometric 1: grey, 2: RGB
        raise _BadPixels(f"unsupported 16-bit TIFF layout ({samples} samples, photometric {photometric})")
    if compression not in tifffile.TIFF.DECOMPRESSORS:  # LZW, JPEG, ... need the optional imagecodecs
        name = tifffile.COMPRESSION(compression).name
        raise _BadPixels(f"16-bit TIFF with {name} compression needs the imagecodecs package")
    with tifffile.TiffFile(fp) as tif:
        page = tif.pages[0]
        pixels = page.asarray()
        axes = page.axes
    if axes == "SYX":  # planar configuration "separate"
        pixels = np.moveaxis(pixels, 0, -1)
    return pixels.astype(np.uint16)


def _orientation_from_exif(exif: bytes | None) -> int:
    if not exif:
        return 1
    parsed = Image.Exif()
    parsed.load(exif)
    return _valid_orientation(parsed.get(_EXIF_ORIENTATION, 1))


def _valid_orientation(value: object) -> int:
    """An EXIF orientation 1..8; anything else (missing, 0, garbage) means 1, as in Pillow."""
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored ``(H, W[, C])`` pixels the way EXIF orientation ``1..8`` says they are displayed."""
    if orientation == 2:  # mirrored left-right
        return pixels[:, ::-1]
    if orientation == 3:  # upside down
        return pixels[::-1, ::-1]
    if orientation == 4:  # mirrored top-bottom
        return pixels[::-1]
    if orientation == 5:  # transposed
        return pixels.swapaxes(0, 1)
    if orientation == 6:  # display = stored turned 90 degrees clockwise
        return np.rot90(pixels, -1)
    if orientation == 7:  # transversed
        return np.rot90(pixels, 2).swapaxes(0, 1)
    if orientation == 8:  # display = stored turned 90 degrees counter-clockwise
        return np.rot90(pixels, 1)
    return pixels


# --------------------------------------------------------------------------------------------------
# Writing


def write_image(
    path: str | os.PathLike[str],
    image: torch.Tensor,
    info: ImageInfo | None = None,
    *,
    bit_depth: int | None = None,
    protect: Iterable[str | os.PathLike[str]] = (),
    quality: int = 95,
) -> Path:
    """Write a ``(C, H, W)`` image in ``[0, 1]`` to ``path``, atomically; return ``path``.

    The format follows the extension of ``path`` (``.png .jpg .jpeg .tif .tiff .bmp .webp``). Values are
    clamped to ``[0, 1]`` and rounded to the nearest level. ``C`` is 1 (grey), 2 (grey+alpha), 3 (RGB) or
    4 (RGBA); JPEG and BMP drop an alpha channel, WebP stores grey as RGB.

    Args:
        path: the output file. Missing parent folders are created.
        image: float tensor ``(C, H, W)`` on any device.
        info: from :func:`read_image` of the source: gives the default bit depth, the ICC profile (kept
            when its colour space matches the output channels), whether WebP output is lossless (when the
            source was stored losslessly), and ``info.path``, which is never overwritten.
        bit_depth: 8 or 16; default ``info.bit_depth``, else 8. PNG and TIFF keep 16 bits; the other
            formats are always written with 8.
        protect: more paths that must not be overwritten (e.g. all inputs of a run).
        quality: JPEG and lossy WebP quality, 1..100 (JPEG uses 4:4:4 chroma, no subsampling).

    Raises:
        ImageError: unknown extension, ``path`` is ``info.path`` or in ``protect`` (also through links),
            ``path`` is a folder, the image contains NaN, or writing fails. A failed write leaves no
            temporary file and any existing file at ``path`` untouched.

    >>> import tempfile, torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> grey = torch.rand(1, 8, 8)
    >>> out = write_image(Path(folder.name) / "grey.tif", grey, bit_depth=16)
    >>> image, info = read_image(out)
    >>> info.format, info.channels, info.bit_depth, bool((image - grey).abs().max() <= 0.5 / 65535)
    ('TIFF', 1, 16, True)
    >>> folder.cleanup()
    """
    path = Path(path)
    image_format = FORMAT_BY_EXTENSION.get(path.suffix.lower())
    if image_format is None:
        known = " ".join(sorted(IMAGE_EXTENSIONS))
        raise _write_error(path, f"unknown image extension {path.suffix!r} (known: {known})")
    _check_image(image)
    if bit_depth is None:
        bit_depth = info.bit_depth if info is not None else 8
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
    if image_format not in _SIXTEEN_BIT_FORMATS:
        bit_depth = 8
    protected = [Path(p) for p in protect]
    if info is not None and info.path is not None:
        protected.append(info.path)
    for other in protected:
        if _same_file(path, other):
            raise _write_error(path, f"refusing to overwrite the input {_quote(other)}")
    if path.is_dir():
        raise _write_error(path, "is a directory")
    if bool(torch.isnan(image).any()):
        raise _write_error(path, "the image contains NaN values")

    pixels = _quantise(image, bit_depth)
    if image_format in ("JPEG", "BMP") and pixels.shape[-1] in (2, 4):  # no (portable) alpha channel
        pixels = pixels[..., :-1]
    icc_profile = info.icc_profile if info is not None and image_format != "BMP" else None
    if icc_profile is not None and not _icc_matches(icc_profile, pixels.shape[-1], image_format):
        icc_profile = None
    lossless = info is not None and info.lossless

    def encode(file: IO[bytes]) -> None:
        if image_format == "TIFF":
            _encode_tifffile(file, pixels, icc_profile)
        elif bit_depth == 16:
            _encode_pypng(file, pixels, icc_profile)
        else:
            _encode_pillow(file, image_format, pixels, icc_profile, quality=quality, lossless=lossless)

    _write_atomically(path, encode)
    return path


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating-point tensor in [0, 1], got {image.dtype}")
    if image.ndim != 3 or image.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"image must be (C, H, W) with C in 1..4, got shape {tuple(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")


def _quantise(image: torch.Tensor, bit_depth: int) -> np.ndarray:
    """``(C, H, W)`` float -> ``(H, W, C)`` uint8/uint16 levels, clamped and rounded to nearest."""
    levels = float(2**bit_depth - 1)
    quantised = image.detach().to("cpu", torch.float32).clamp(0, 1).mul(levels).round().to(torch.int32)
    return quantised.permute(1, 2, 0).numpy().astype(np.uint16 if bit_depth == 16 else np.uint8)


def _icc_matches(icc_profile: bytes, channels: int, image_format: str) -> bool:
    # ICC header bytes 16..20 name the profile's colour space; it must match the colour channels written.
    colour_space = icc_profile[16:20]
    grey_written = channels <= 2 and image_format != "WEBP"  # WebP stores grey as RGB
    return colour_space == (b"GRAY" if grey_written else b"RGB ")


def _encode_pillow(
    file: IO[bytes],
    image_format: str,
    pixels: np.ndarray,
    icc_profile: bytes | None,
    *,
    quality: int,
    lossless: bool,
) -> None:
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    options: dict[str, object] = {}
    if icc_profile is not None:
        options["icc_profile"] = icc_profile
    if image_format == "JPEG":
        options.update(quality=quality, subsampling="4:4:4")
    elif image_format == "WEBP" and lossless:  # exact: keep the colour under alpha 0, so RGBA round-trips
        options.update(lossless=True, quality=100, exact=True)
    elif image_format == "WEBP":
        options.update(quality=quality)
    picture.save(file, format=image_format, **options)


def _encode_pypng(file: IO[bytes], pixels: np.ndarray, icc_profile: bytes | None) -> None:
    height, width, channels = pixels.shape
    writer = png.Writer(width, height, greyscale=channels <= 2, alpha=channels in (2, 4), bitdepth=16)
    rows = pixels.reshape(height, width * channels)
    if icc_profile is None:
        writer.write(file, rows)
        return
    # pypng has no ICC option: write to memory, then add an iCCP chunk right after IHDR.
    buffer = io.BytesIO()
    writer.write(buffer, rows)
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    chunks.insert(1, (b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    png.write_chunks(file, chunks)


def _encode_tifffile(file: IO[bytes], pixels: np.ndarray, icc_profile: bytes | None) -> None:
    channels = pixels.shape[-1]
    tifffile.imwrite(
        file,
        pixels[..., 0] if channels == 1 else pixels,
        photometric="minisblack" if channels <= 2 else "rgb",
        planarconfig="contig",
        extrasamples=["unassalpha"] if channels in (2, 4) else None,
        compression="zlib",  # Deflate: lossless and readable everywhere
        iccprofile=icc_profile,
        metadata=None,
    )


def write_text(path: str | os.PathLike[str], text: str, *, what: str = "file") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_image` writes images; return ``path``.

    Raises:
        AdeblurError: the file cannot be written (the message names ``what`` and the path).

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> write_text(Path(folder.name) / "a" / "notes.csv", "x,y").read_text()
    'x,y'
    >>> folder.cleanup()
    """
    path = Path(path)

    def error(target: Path, reason: str) -> AdeblurError:
        return AdeblurError(f"cannot write {what} {_quote(target)}: {one_line(reason)}")

    _write_atomically(path, lambda file: file.write(text.encode("utf-8")), error)
    return path


def _write_atomically(
    path: Path, encode: Callable[[IO[bytes]], object], error: Callable[[Path, str], Exception] | None = None
) -> None:
    """Encode into a temporary file beside ``path``, then rename it over ``path``."""
    error = error or _write_error
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        file = open(temporary, "xb")  # noqa: SIM115 -- exclusive create; permissions follow the umask
    except OSError as err:
        raise error(path, err.strerror or str(err)) from err
    try:
        with file:
            encode(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        if not isinstance(err, Exception):
            raise
        raise error(path, (err.strerror if isinstance(err, OSError) else None) or str(err) or type(err).__name__) from err


def _same_file(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return path.resolve() == other.resolve()


# --------------------------------------------------------------------------------------------------
# Channel layouts for RGB models


def to_rgb(image: torch.Tensor) -> tuple[torch.Tensor, RGBRestore]:
    """Make a 3-channel image for an RGB model, keeping what :func:`from_rgb` needs to undo it.

    Grey is repeated into R, G and B; an alpha channel (grey+alpha or RGBA) is set aside unchanged.

    Args:
        image: ``(C, H, W)`` or ``(B, C, H, W)`` with C in 1..4.

    Returns:
        ``(rgb, restore)``: ``rgb`` is ``(3, H, W)`` / ``(B, 3, H, W)`` (the input itself when C is 3).

    >>> import torch
    >>> rgb, restore = to_rgb(torch.rand(2, 2, 5, 5))
    >>> rgb.shape, restore.channels, restore.alpha.shape
    (torch.Size([2, 3, 5, 5]), 2, torch.Size([2, 1, 5, 5]))
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim not in (3, 4) or image.shape[-3] not in (1, 2, 3, 4):
        raise ValueError(f"image must be (C, H, W) or (B, C, H, W) with C in 1..4, got {tuple(image.shape)}")
    channels = image.shape[-3]
    has_alpha = channels in (2, 4)
    colour = image[..., : channels - 1, :, :] if has_alpha else image
    alpha = image[..., channels - 1 :, :, :] if has_alpha else None
    if colour.shape[-3] == 1:
        colour = colour.expand(*colour.shape[:-3], 3, *colour.shape[-2:]).contiguous()
    return colour, RGBRestore(channels=channels, alpha=alpha)


def from_rgb(rgb: torch.Tensor, restore: RGBRestore) -> torch.Tensor:
    """Put an RGB result back into the layout :func:`to_rgb` was given.

    Grey sources get the BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of the result (the grey value
    itself, up to rounding, when R = G = B); the alpha channel set aside is appended unchanged.

    Args:
        rgb: ``(3, H, W)`` or ``(B, 3, H, W)``, the same layout and size :func:`to_rgb` returned.
        restore: the second result of :func:`to_rgb`.

    >>> import torch
    >>> grey_alpha = torch.rand(2, 4, 4)
    >>> rgb, restore = to_rgb(grey_alpha)
    >>> bool(torch.allclose(from_rgb(rgb, restore), grey_alpha))
    True
    """
    if not isinstance(rgb, torch.Tensor):
        raise TypeError(f"rgb must be a torch.Tensor, got {type(rgb).__name__}")
    if rgb.ndim not in (3, 4) or rgb.shape[-3] != 3:
        raise ValueError(f"rgb must be (3, H, W) or (B, 3, H, W), got {tuple(rgb.shape)}")
    alpha = restore.alpha
    if alpha is not None and (alpha.shape[:-3], alpha.shape[-2:]) != (rgb.shape[:-3], rgb.shape[-2:]):
        raise ValueError(f"rgb {tuple(rgb.shape)} does not match the alpha kept aside, {tuple(alpha.shape)}")
    colour = rgb
    if restore.channels <= 2:
        weights = torch.tensor(_BT601_LUMA, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
        colour = (rgb * weights).sum(dim=-3, keepdim=True)
    if alpha is None:
        return colour
    return torch.cat([colour, alpha.to(device=rgb.device, dtype=rgb.dtype)], dim=-3)


# --------------------------------------------------------------------------------------------------
# Messages


def _quote(path: os.PathLike[str] | str) -> str:
    """The path in quotes, with line breaks escaped so that a message stays on one line."""
    return "'" + str(path).replace("\r", "\\r").replace("\n", "\\n") + "'"


def _read_error(path: Path, reason: str) -> ImageError:
    return ImageError(f"cannot read image {_quote(path)}: {one_line(reason)}")


def _write_error(path: Path, reason: str) -> ImageError:
    return ImageError(f"cannot write image {_quote(path)}: {one_line(reason)}")
