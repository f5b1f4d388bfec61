"""The shared image decoder against a corpus of bad and unusual inputs, generated here."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from regen.common.errors import InvalidInput
from regen.common.images import ImageDecodeError, ImageLimits, decode_image, encode_png


def _png(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _gradient(width: int = 32, height: int = 24) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    out = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)
    out += struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    return out


def test_rgb_png_round_trips_losslessly() -> None:
    img = _gradient()
    decoded = decode_image(encode_png(img))
    assert decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), np.asarray(img))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"empty \(0 bytes\)"),
        (b"this is not an image at all" * 10, "not a recognised image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 7, "not a recognised image format"),
    ],
    ids=["zero-bytes", "non-image", "png-signature-only"],
)
def test_garbage_is_rejected_with_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data, what="candidate 3")


def test_error_names_the_input() -> None:
    with pytest.raises(ImageDecodeError, match=r"^candidate 3: empty"):
        decode_image(b"", what="candidate 3")


def test_truncated_png_is_rejected() -> None:
    data = _png(_gradient(256, 256))
    with pytest.raises(ImageDecodeError, match="truncated or corrupt PNG"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_rejected_before_decoding() -> None:
    with pytest.raises(ImageDecodeError, match=r"30000x30000 = 900000000 pixels exceeds .*decompression bomb"):
        decode_image(_bomb_png(30000, 30000))


def test_byte_limit() -> None:
    data = _png(_gradient())
    with pytest.raises(ImageDecodeError, match=f"{len(data)} bytes exceeds the limit of 100 bytes"):
        decode_image(data, ImageLimits(max_bytes=100))


def test_invalid_error_maps_to_invalid_argument() -> None:

    assert issubclass(ImageDecodeError, InvalidInput)
    assert ImageDecodeError.status == "INVALID_ARGUMENT"


def test_16bit_grayscale_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    decoded = decode_image(_png(img))
    assert decoded.mode == "RGB"
    assert np.asarray(decoded)[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    decoded = decode_image(buf.getvalue())
    assert decoded.mode == "RGB"
    r, g, b = np.asarray(decoded).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_rgba_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    decoded = np.asarray(decode_image(_png(rgba)))
    assert decoded[0, 0].tolist() == [0, 0, 255]
    assert decoded[1, 1].tolist() == [255, 255, 255]


def test_palette_image_with_transparency() -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    pal.putpixel((0, 0), 0)
    decoded = np.asarray(decode_image(_png(pal, transparency=0)))
    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[2, 2].tolist() == [10, 200, 30]


def test_animated_gif_is_rejected() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.raises(ImageDecodeError, match="animated GIF with 2 frames"):
        decode_image(buf.getvalue())


def test_single_frame_gif_is_accepted() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buf, format="GIF")
    assert decode_image(buf.getvalue()).size == (8, 8)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    decoded = decode_image(buf.getvalue())
    assert decoded.size == (20, 40)
    top = np.asarray(decoded)[:5].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[1] < 80  # the red strip is now on top


def test_one_by_one_pixel() -> None:
    decoded = decode_image(_png(Image.new("RGB", (1, 1), (1, 2, 3))))
    assert decoded.size == (1, 1)
    assert np.asarray(decoded)[0, 0].tolist() == [1, 2, 3]


def test_grayscale_and_la_modes() -> None:
    assert decode_image(_png(Image.new("L", (3, 3), 77))).getpixel((1, 1)) == (77, 77, 77)
    assert decode_image(_png(Image.new("LA", (3, 3), (77, 0)))).getpixel((1, 1)) == (255, 255, 255)


def test_encode_png_is_lossless_at_every_level() -> None:
    img = _gradient()
    for level in (0, 1, 6):
        assert np.array_equal(np.asarray(decode_image(encode_png(img, level))), np.asarray(img))
