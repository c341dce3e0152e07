"""Tests for adeblur.io: every file is made in tmp_path by Pillow, pypng or tifffile (independent writers
and readers serve as oracles), so the tests need no sample data."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
import torch
from PIL import Image, ImageCms, ImageOps

import adeblur.io as aio
from adeblur.errors import ConfigError, ImageError
from adeblur.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageInfo,
    from_rgb,
    is_image_path,
    list_images,
    read_image,
    read_image_size,
    to_rgb,
    write_image,
)

RNG = np.random.default_rng(1234)


def levels(height: int, width: int, channels: int, bit_depth: int = 8) -> np.ndarray:
    """Random integer pixels (H, W, C)."""
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    return RNG.integers(0, 2**bit_depth, size=(height, width, channels)).astype(dtype)


def as_tensor(pixels: np.ndarray, bit_depth: int = 8) -> torch.Tensor:
    """Integer (H, W[, C]) -> float (C, H, W), computed independently of adeblur.io."""
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.astype(np.float64) / (2**bit_depth - 1)).permute(2, 0, 1).float()


def as_levels(image: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    return (image.permute(1, 2, 0).double() * (2**bit_depth - 1)).round().numpy().astype(np.int64)


def smooth(channels: int, height: int = 32, width: int = 48) -> torch.Tensor:
    """A smooth image, so that lossy codecs stay close to it."""
    y = torch.linspace(0, 1, height).view(1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width)
    phase = torch.arange(channels).view(channels, 1, 1)
    return 0.5 + 0.4 * torch.sin(3 * x + 2 * y + phase)


def assert_one_line_naming(error: pytest.ExceptionInfo[ImageError], path: Path) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert path.name in message


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --------------------------------------------------------------------------------------------------
# Paths


def test_extensions_and_is_image_path():
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
    assert is_image_path("a/b.PNG") and is_image_path(Path("x.Jpeg")) and is_image_path("y.tif")
    assert not is_image_path("notes.txt") and not is_image_path("png") and not is_image_path("a.gif")


def test_list_images_sorted_flat_case_insensitive(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.TiFf", "notes.txt", ".hidden.png", "d.webp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a directory with an image-like name
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.TiFf", "d.webp"]
    with pytest.raises(ImageError, match="not a folder"):
        list_images(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# Reading files written by other libraries


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [(fmt, mode) for fmt in ("PNG", "TIFF") for mode in ("L", "LA", "RGB", "RGBA")]
    + [("BMP", "L"), ("BMP", "RGB")],
)
def test_read_8bit_matches_source(tmp_path, fmt, mode):
    pixels = levels(7, 9, len(mode))
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels).save(path, format=fmt)
    image, info = read_image(path)
    assert image.dtype == torch.float32 and image.shape == (len(mode), 7, 9)
    assert torch.equal(image, as_tensor(pixels))
    assert (info.format, info.channels, info.bit_depth, info.palette) == (fmt, len(mode), 8, False)
    assert (info.height, info.width, info.has_alpha, info.path) == (7, 9, mode in ("LA", "RGBA"), path)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_read_lossless_webp(tmp_path, mode):
    pixels = levels(6, 8, len(mode))
    pixels[..., -1] = np.maximum(pixels[..., -1], 1)  # WebP may change colours under alpha 0
    path = tmp_path / "x.webp"
    Image.fromarray(pixels).save(path, lossless=True, exact=True)
    image, info = read_image(path)
    assert torch.equal(image, as_tensor(pixels))
    assert (info.format, info.channels, info.lossless) == ("WEBP", len(mode), True)
    Image.fromarray(pixels).save(path, quality=80)
    assert read_image(path)[1].lossless is False


def test_webp_output_is_lossy_without_a_lossless_source(tmp_path):
    image = smooth(3)
    path = write_image(tmp_path / "x.webp", image, quality=90)
    result, info = read_image(path)
    assert not info.lossless and not torch.equal(result, image)
    assert (result - image).abs().mean() < 0.02


def test_read_bilevel_is_8bit_grey(tmp_path):
    bits = RNG.integers(0, 2, size=(5, 11)).astype(bool)
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    image, info = read_image(path)
    assert (info.channels, info.bit_depth) == (1, 8)
    assert torch.equal(image[0], torch.from_numpy(bits).float())


@pytest.mark.parametrize(
    ("fmt", "transparent"), [("PNG", False), ("PNG", True), ("BMP", False), ("TIFF", False)]
)
def test_read_palette_expands(tmp_path, fmt, transparent):
    colours = levels(1, 16, 3)[0]
    indices = RNG.integers(0, 16, size=(6, 7)).astype(np.uint8)
    picture = Image.frombytes("P", (7, 6), indices.tobytes())
    picture.putpalette(colours.reshape(-1).tolist())
    options = {"transparency": bytes([255] * 5 + [0] + [128] * 10)} if transparent else {}
    path = tmp_path / f"p.{fmt.lower()}"
    picture.save(path, format=fmt, **options)
    image, info = read_image(path)
    expected = colours[indices]
    if transparent:
        alpha = np.array([255] * 5 + [0] + [128] * 10, dtype=np.uint8)[indices]
        expected = np.concatenate([expected, alpha[..., None]], axis=-1)
    assert info.palette and info.channels == (4 if transparent else 3) and info.bit_depth == 8
    assert torch.equal(image, as_tensor(expected))


def test_read_cmyk_jpeg_as_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 4), (0, 255, 255, 0)).save(path, quality=100)  # red
    image, info = read_image(path)
    assert info.channels == 3 and info.format == "JPEG" and not info.lossless
    assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.03)


def test_read_16bit_colour_png_keeps_low_byte(tmp_path):
    # Values that differ only in the low byte must stay different (Pillow would keep the high byte).
    pixels = np.array([[[0x1200, 0x1201, 0x12FF], [0xFFFF, 0x0001, 0x8000]]], dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    png.from_array(pixels.reshape(1, -1), "RGB;16").save(path)
    image, info = read_image(path)
    assert (info.channels, info.bit_depth) == (3, 16)
    assert image[0, 0, 0] < image[1, 0, 0] < image[2, 0, 0]
    assert torch.equal(image, as_tensor(pixels, 16))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_read_16bit_png(tmp_path, mode):
    pixels = levels(5, 6, len(mode), 16)
    path = tmp_path / "x16.png"
    png.from_array(pixels.reshape(5, -1), f"{mode};16").save(path)
    image, info = read_image(path)
    assert (info.channels, info.bit_depth, info.format) == (len(mode), 16, "PNG")
    assert torch.equal(image, as_tensor(pixels, 16))


@pytest.mark.parametrize(
    ("channels", "planar"), [(1, False), (2, False), (3, False), (4, False), (3, True), (4, True)]
)
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_read_16bit_tiff(tmp_path, channels, planar, byteorder):
    pixels = levels(5, 6, channels, 16)
    data = np.moveaxis(pixels, -1, 0) if planar else pixels
    path = tmp_path / "x16.tif"
    tifffile.imwrite(
        path,
        data[..., 0] if channels == 1 else data,
        byteorder=byteorder,
        photometric="rgb" if channels >= 3 else "minisblack",
        planarconfig="separate" if planar else "contig",
        extrasamples=["unassalpha"] if channels in (2, 4) else None,
        metadata=None,
    )
    image, info = read_image(path)
    assert (info.channels, info.bit_depth, info.format) == (channels, 16, "TIFF")
    assert torch.equal(image, as_tensor(pixels, 16))


def test_float_tiff_is_refused(tmp_path):
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.float32))
    with pytest.raises(ImageError, match="floating-point") as error:
        read_image(path)
    assert_one_line_naming(error, path)


def test_16bit_tiff_compression_tifffile_cannot_decode_is_named(tmp_path):
    if 5 in tifffile.TIFF.DECOMPRESSORS:
        pytest.skip("imagecodecs is installed: LZW decodes")
    path = tmp_path / "lzw16.tif"
    tifffile.imwrite(path, np.zeros((4, 5, 3), np.uint16), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags[259].valueoffset  # Compression tag
    data = bytearray(path.read_bytes())
    data[offset : offset + 2] = (5).to_bytes(2, "little")  # claim LZW
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="LZW compression needs the imagecodecs package") as error:
        read_image(path)
    assert_one_line_naming(error, path)


# --------------------------------------------------------------------------------------------------
# EXIF orientation


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    pixels = levels(3, 5, 3)
    path = tmp_path / "o.png"
    Image.fromarray(pixels).save(path, exif=_exif(orientation))
    image, info = read_image(path)
    with Image.open(path) as source:
        expected = np.asarray(ImageOps.exif_transpose(source))
    assert torch.equal(image, as_tensor(expected))
    assert read_image_size(path) == (info.height, info.width) == expected.shape[:2]


def test_jpeg_orientation_6_rotates_clockwise(tmp_path):
    # Four flat quadrants survive JPEG well; orientation 6 = display the stored image turned 90 deg clockwise.
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:16, :24] = (255, 0, 0)
    stored[:16, 24:] = (0, 255, 0)
    stored[16:, :24] = (0, 0, 255)
    stored[16:, 24:] = (255, 255, 255)
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=_exif(6), quality=95, subsampling=0)
    assert read_image_size(path) == (48, 32)
    image, info = read_image(path)
    assert image.shape == (3, 48, 32) and (info.height, info.width) == (48, 32)
    expected = as_tensor(np.ascontiguousarray(np.rot90(stored, -1)))
    assert (image - expected).abs().mean() < 0.01
    assert torch.allclose(image[:, 4, 28], torch.tensor([1.0, 0.0, 0.0]), atol=0.05)  # red now top right


def test_orientation_in_16bit_png_and_tiff(tmp_path):
    pixels = levels(3, 5, 3, 16)
    expected = as_tensor(np.ascontiguousarray(np.rot90(pixels, 1)), 16)  # orientation 8: 90 deg ccw
    png_path = tmp_path / "o16.png"
    plain = tmp_path / "plain.png"
    png.from_array(pixels.reshape(3, -1), "RGB;16").save(plain)
    chunks = list(png.Reader(bytes=plain.read_bytes()).chunks())
    chunks.insert(-1, (b"eXIf", _exif(8)[6:]))  # after IDAT, without the "Exif\0\0" prefix
    with open(png_path, "wb") as file:
        png.write_chunks(file, chunks)
    tiff_path = tmp_path / "o16.tif"
    tifffile.imwrite(tiff_path, pixels, photometric="rgb", extratags=[(274, "H", 1, 8, True)], metadata=None)
    for path in (png_path, tiff_path):
        image, info = read_image(path)
        assert info.bit_depth == 16 and torch.equal(image, expected)
        assert read_image_size(path) == (5, 3)


# --------------------------------------------------------------------------------------------------
# Writing


FORMATS = {".png": "PNG", ".tif": "TIFF", ".bmp": "BMP", ".webp": "WEBP", ".jpg": "JPEG"}


def _expected_channels(suffix: str, channels: int) -> int:
    if suffix in (".jpg", ".bmp"):
        return channels - 1 if channels in (2, 4) else channels  # alpha dropped
    if suffix == ".webp":
        return 4 if channels in (2, 4) else 3  # grey stored as RGB
    return channels


@pytest.mark.parametrize("suffix", list(FORMATS))
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_write_read_round_trip(tmp_path, suffix, channels, bit_depth):
    lossy = suffix == ".jpg"
    kept_depth = bit_depth if suffix in (".png", ".tif") else 8
    if lossy:
        image = smooth(channels)
    else:
        image = as_tensor(levels(5, 7, channels, kept_depth), kept_depth)
    # A lossless source makes WebP output lossless (info.lossless).
    info = None
    if suffix == ".webp":
        info = ImageInfo(None, "PNG", image.shape[1], image.shape[2], channels, bit_depth)
    path = write_image(tmp_path / f"out{suffix}", image, info, bit_depth=bit_depth)
    assert path == tmp_path / f"out{suffix}"
    result, read_info = read_image(path)
    out_channels = _expected_channels(suffix, channels)
    assert (read_info.format, read_info.channels) == (FORMATS[suffix], out_channels)
    assert read_info.bit_depth == kept_depth
    if suffix == ".webp" and channels <= 2:  # grey written as R = G = B
        result = torch.cat([result[:1], result[3:]])
    colour = channels - 1 if channels in (2, 4) else channels
    compared = image if result.shape[0] == channels else image[:colour]
    if lossy:
        assert (result - compared).abs().mean() < 0.02
    else:
        assert torch.equal(result, compared)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]  # no temporary file left


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_output_read_by_pypng_and_tifffile(tmp_path, channels):
    pixels = levels(4, 6, channels, 16)
    pixels[0, 0, 0], pixels[0, 1, 0] = 0x4000, 0x40FF  # differ in the low byte only
    image = as_tensor(pixels, 16)
    png_path = write_image(tmp_path / "x.png", image, bit_depth=16)
    width, height, rows, meta = png.Reader(bytes=png_path.read_bytes()).asDirect()
    assert meta["bitdepth"] == 16 and meta["planes"] == channels
    assert np.array_equal(np.vstack(list(rows)).reshape(height, width, channels), pixels)
    tif_path = write_image(tmp_path / "x.tif", image, bit_depth=16)
    stored = tifffile.imread(tif_path)
    assert stored.dtype == np.uint16 and np.array_equal(stored.reshape(pixels.shape), pixels)


def test_write_bit_depth_defaults(tmp_path):
    image = torch.rand(3, 4, 4)
    info16 = ImageInfo(None, "PNG", 4, 4, 3, 16)
    assert read_image(write_image(tmp_path / "a.png", image))[1].bit_depth == 8
    assert read_image(write_image(tmp_path / "b.png", image, info16))[1].bit_depth == 16
    assert read_image(write_image(tmp_path / "c.png", image, info16, bit_depth=8))[1].bit_depth == 8
    assert read_image(write_image(tmp_path / "d.jpg", image, info16))[1].bit_depth == 8  # JPEG holds 8 only
    with pytest.raises(ValueError, match="bit_depth"):
        write_image(tmp_path / "e.png", image, bit_depth=12)


def test_write_rounds_and_clamps(tmp_path):
    values = torch.tensor([-0.5, 0.4 / 255, 0.6 / 255, 1.4 / 255, 254.6 / 255, 1.7]).view(1, 1, 6)
    path = write_image(tmp_path / "r.png", values)
    with Image.open(path) as written:
        assert np.asarray(written).tolist() == [[0, 0, 1, 1, 255, 255]]


def test_write_keeps_palette_source_as_rgb(tmp_path):
    picture = Image.frombytes("P", (4, 3), bytes(range(12)))
    picture.putpalette(levels(1, 12, 3).reshape(-1).tolist())
    source = tmp_path / "p.png"
    picture.save(source)
    image, info = read_image(source)
    out = write_image(tmp_path / "out.png", image, info)
    with Image.open(out) as written:
        assert written.mode == "RGB"
    assert torch.equal(read_image(out)[0], image)


def test_icc_profile_round_trip(tmp_path):
    profile = srgb_profile()
    source = tmp_path / "icc.png"
    Image.fromarray(levels(4, 4, 3)).save(source, icc_profile=profile)
    image, info = read_image(source)
    assert info.icc_profile == profile
    for name, bit_depth in [("a.png", 8), ("b.png", 16), ("c.tif", 16), ("d.jpg", 8), ("e.webp", 8)]:
        written = write_image(tmp_path / name, image, info, bit_depth=bit_depth)
        assert read_image(written)[1].icc_profile == profile
    grey = write_image(tmp_path / "grey.png", image[:1], info)  # an RGB profile does not fit grey
    assert read_image(grey)[1].icc_profile is None


def test_write_rejects_bad_arguments(tmp_path):
    with pytest.raises(ImageError, match="unknown image extension") as error:
        write_image(tmp_path / "x.gif", torch.rand(3, 2, 2))
    assert_one_line_naming(error, tmp_path / "x.gif")
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", torch.rand(5, 2, 2))
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", torch.rand(1, 3, 2, 2))
    with pytest.raises(TypeError):
        write_image(tmp_path / "x.png", torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="quality"):
        write_image(tmp_path / "x.jpg", torch.rand(3, 2, 2), quality=0)
    with pytest.raises(ImageError, match="NaN"):
        write_image(tmp_path / "x.png", torch.full((1, 2, 2), float("nan")))
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="directory"):
        write_image(tmp_path / "folder.png", torch.rand(1, 2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png"]


def test_write_creates_missing_parent(tmp_path):
    path = write_image(tmp_path / "a" / "b" / "x.png", torch.rand(3, 2, 2))
    assert path.is_file()


def test_write_refuses_to_overwrite_inputs(tmp_path):
    source = write_image(tmp_path / "in.png", torch.rand(3, 4, 4))
    original = source.read_bytes()
    image, info = read_image(source)
    with pytest.raises(ImageError, match="overwrite") as error:
        write_image(source, image, info)
    assert_one_line_naming(error, source)
    with pytest.raises(ImageError, match="overwrite"):  # the same file by another spelling
        write_image(tmp_path / "sub" / ".." / "in.png", image, info)
    other = write_image(tmp_path / "other.png", image)
    with pytest.raises(ImageError, match="overwrite"):
        write_image(other, image, protect=[source, other])
    link = tmp_path / "link.png"
    os.link(source, link)  # a hard link is the same file under another name
    with pytest.raises(ImageError, match="overwrite"):
        write_image(link, image, protect=[source])
    symlink = tmp_path / "symlink.png"
    symlink.symlink_to(source)
    with pytest.raises(ImageError, match="overwrite"):
        write_image(symlink, image, info)
    with pytest.raises(ImageError, match="overwrite"):  # protected paths that do not exist yet
        write_image(tmp_path / "new.png", image, protect=[tmp_path / "new.png"])
    assert source.read_bytes() == original
    write_image(tmp_path / "in_deblurred.png", image, info, protect=[source])  # a different file is fine


@pytest.mark.parametrize(("suffix", "encoder"), [(".png", "_encode_pillow"), (".tif", "_encode_tifffile")])
def test_failed_write_keeps_target_and_leaves_no_temporary(tmp_path, monkeypatch, suffix, encoder):
    target = write_image(tmp_path / f"out{suffix}", torch.zeros(3, 4, 4))
    before = target.read_bytes()

    def broken(file, *args, **kwargs):
        file.write(b"partial data")
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(aio, encoder, broken)
    with pytest.raises(ImageError, match="encoder exploded") as error:
        write_image(target, torch.ones(3, 4, 4))
    assert_one_line_naming(error, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_write_into_unwritable_place_is_image_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(ImageError) as error:
        write_image(blocker / "x.png", torch.rand(1, 2, 2))  # parent is a file
    assert_one_line_naming(error, blocker / "x.png")


# --------------------------------------------------------------------------------------------------
# Bad input


def _png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` RGB pixels but whose data is garbage."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as file:
        png.write_chunks(file, [(b"IHDR", header), (b"IDAT", zlib.compress(b"garbage")), (b"IEND", b"")])
    return path


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    files: dict[str, tuple[Path, str]] = {}
    files["missing"] = (tmp_path / "missing.png", "no such file")
    (tmp_path / "dir.png").mkdir()
    files["directory"] = (tmp_path / "dir.png", "directory")
    (tmp_path / "empty.png").write_bytes(b"")
    files["empty"] = (tmp_path / "empty.png", "empty")
    (tmp_path / "text.png").write_text("not an image\nat all\n")
    files["not an image"] = (tmp_path / "text.png", "not a PNG, JPEG")
    files["zero size"] = (_png_with_header(tmp_path / "zero.png", 0, 5), "zero-size")
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + bytes(RNG.integers(0, 256, 200, dtype=np.uint8)))
    files["corrupt header"] = (tmp_path / "garbage.jpg", "corrupt")
    files["corrupt data"] = (_png_with_header(tmp_path / "corrupt.png", 4, 4), "corrupt")
    return files


BAD_CASES = ["missing", "directory", "empty", "not an image", "zero size", "corrupt header", "corrupt data"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_one_line_image_error(tmp_path, case):
    path, reason = _bad_files(tmp_path)[case]
    with pytest.raises(ImageError, match=reason) as error:
        read_image(path)
    assert_one_line_naming(error, path)
    if case != "corrupt data":  # size needs the header only
        with pytest.raises(ImageError, match=reason):
            read_image_size(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp", ".webp"])
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("keep", [0.5, "all but 10 bytes"])
def test_truncated_files_are_refused(tmp_path, suffix, bit_depth, keep):
    whole = write_image(tmp_path / f"whole{suffix}", smooth(3, 24, 24), bit_depth=bit_depth).read_bytes()
    cut = len(whole) - 10 if keep == "all but 10 bytes" else int(len(whole) * keep)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(whole[:cut])
    with pytest.raises(ImageError, match="corrupt or truncated") as error:
        read_image(path)
    assert_one_line_naming(error, path)


def test_read_image_size_reads_the_header_only(tmp_path):
    whole = write_image(tmp_path / "whole.jpg", torch.rand(3, 120, 80)).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[: len(whole) // 2])  # pixel data cut, header intact
    assert read_image_size(path) == (120, 80)
    with pytest.raises(ImageError, match="truncated"):
        read_image(path)


def test_flipped_bytes_in_png_data_are_refused(tmp_path):
    path = write_image(tmp_path / "x.png", torch.rand(3, 16, 16))
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 20
    data[start : start + 8] = bytes(255 - b for b in data[start : start + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt"):
        read_image(path)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    huge = _png_with_header(tmp_path / "huge.png", 100_000, 100_000)  # 10^10 pixels, garbage data
    for read in (read_image, read_image_size):
        with pytest.raises(ImageError, match="exceeds the limit") as error:
            read(huge)
        assert_one_line_naming(error, huge)
        assert str(DEFAULT_MAX_PIXELS) in str(error.value)
    small = write_image(tmp_path / "small.png", torch.rand(3, 10, 10))
    assert read_image(small, max_pixels=100)[0].shape == (3, 10, 10)
    with pytest.raises(ImageError, match="limit of 99"):
        read_image(small, max_pixels=99)
    with pytest.raises(ValueError):
        read_image(small, max_pixels=0)


def test_pixel_limit_from_environment(tmp_path, monkeypatch):
    small = write_image(tmp_path / "small.jpg", torch.rand(3, 10, 10))
    monkeypatch.setenv("ADEBLUR_MAX_PIXELS", "99")
    with pytest.raises(ImageError, match="limit of 99"):
        read_image(small)
    with pytest.raises(ImageError, match="limit of 99"):
        read_image_size(small)
    assert read_image(small, max_pixels=100)[0].shape == (3, 10, 10)  # the argument wins
    monkeypatch.setenv("ADEBLUR_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="ADEBLUR_MAX_PIXELS"):
        read_image(small)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp", ".webp"])
def test_pillow_bomb_check_yields_to_adeblur_limit(tmp_path, monkeypatch, suffix):
    path = write_image(tmp_path / f"x{suffix}", torch.rand(3, 20, 20))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow alone would refuse 400 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path)[0].shape == (3, 20, 20)
        assert read_image_size(path) == (20, 20)
    assert Image.MAX_IMAGE_PIXELS == 50  # restored


# --------------------------------------------------------------------------------------------------
# RGB models


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("batched", [False, True])
def test_to_rgb_from_rgb_round_trip(channels, batched):
    image = torch.rand(2, channels, 5, 6) if batched else torch.rand(channels, 5, 6)
    rgb, restore = to_rgb(image)
    assert rgb.shape == (*image.shape[:-3], 3, 5, 6)
    assert restore.channels == channels
    colour = image[..., : 1 if channels <= 2 else 3, :, :]
    assert torch.equal(rgb, colour.expand_as(rgb))
    if channels in (2, 4):
        assert torch.equal(restore.alpha, image[..., -1:, :, :])
    else:
        assert restore.alpha is None
    assert torch.allclose(from_rgb(rgb, restore), image, atol=1e-6)


def test_from_rgb_uses_bt601_luma_for_grey_and_keeps_alpha():
    grey_alpha = torch.rand(2, 3, 4)
    _, restore = to_rgb(grey_alpha)
    output = torch.rand(3, 3, 4)
    result = from_rgb(output, restore)
    expected = 0.299 * output[0] + 0.587 * output[1] + 0.114 * output[2]
    assert torch.allclose(result[0], expected, atol=1e-6)
    assert torch.equal(result[1], grey_alpha[1])
    with pytest.raises(ValueError):
        from_rgb(torch.rand(3, 5, 4), restore)  # size differs from the alpha kept aside
    with pytest.raises(ValueError):
        from_rgb(torch.rand(4, 3, 4), restore)


def test_grey_image_through_rgb_model_and_back_to_file(tmp_path):
    source = tmp_path / "grey.png"
    pixels = levels(6, 5, 2)
    Image.fromarray(pixels).save(source)
    image, info = read_image(source)
    rgb, restore = to_rgb(image)
    out = write_image(tmp_path / "grey_deblurred.png", from_rgb(rgb, restore), info)
    result, out_info = read_image(out)
    assert (out_info.channels, out_info.bit_depth) == (2, 8)
    assert torch.equal(result, image)
