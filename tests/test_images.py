"""Image inputs: every format LoopML reads becomes an upright RGB picture; every bad input is an ImageError that
says what was wrong, before any pixel of an oversized image is decoded."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from loopml.images import (
    ImageError,
    ImageLimits,
    data_uri,
    decode_image,
    image_bytes,
    image_hash,
    image_properties,
    thumbnail_uri,
)


def encoded(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def red(size: tuple[int, int] = (8, 4), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, (255, 0, 0) if mode == "RGB" else 76)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_format_decodes_to_rgb_from_bytes_base64_and_data_uri(fmt: str) -> None:
    data = encoded(red(), fmt)
    b64 = base64.b64encode(data).decode()
    for value in (data, b64, f"data:image/{fmt.lower()};base64,{b64}", f"  {b64[:10]}\n{b64[10:]}  "):
        picture = decode_image(value)
        assert picture.mode == "RGB" and picture.size == (8, 4)
        r, g, b = picture.getpixel((3, 2))
        assert r > 200 and g < 60 and b < 60


def test_a_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((0, 0, 255), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_image(buffer.getvalue()).getpixel((1, 1))
    assert b > 200 and g < 60


def test_exif_orientation_is_applied() -> None:
    picture = Image.new("RGB", (6, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encoded(picture, "JPEG", exif=exif.tobytes())
    assert decode_image(data).size == (2, 6)


def test_grey_and_transparent_pictures_become_rgb_on_white() -> None:
    assert decode_image(encoded(red(mode="L"), "PNG")).getpixel((0, 0)) == (76, 76, 76)
    clear = Image.new("RGBA", (3, 3), (255, 0, 0, 0))
    assert decode_image(encoded(clear, "PNG")).getpixel((1, 1)) == (255, 255, 255)
    half = Image.new("LA", (3, 3), (0, 255))
    assert decode_image(encoded(half, "PNG")).getpixel((1, 1)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"just some text", "not an image LoopML reads"),
        ("not base64 at all!", "neither base64 nor"),
        ("data:image/png,raw", "must be base64"),
        ("", "empty"),
        (encoded(red(), "BMP"), "not an image LoopML reads"),  # a real image, in a format LoopML does not read
        (encoded(red((64, 64)), "PNG")[:60], "truncated or corrupt"),
        (12, "base64 text or bytes"),
    ],
)
def test_bad_inputs_say_what_is_wrong(value, says: str) -> None:
    with pytest.raises(ImageError, match=says):
        decode_image(value)


def test_size_limits_are_checked_before_decoding() -> None:
    data = encoded(red((100, 100)), "PNG")
    with pytest.raises(ImageError, match="bytes; at most 10"):
        image_bytes(data, ImageLimits(max_bytes=10))
    with pytest.raises(ImageError, match="bytes; at most 10"):
        image_bytes(base64.b64encode(data).decode(), ImageLimits(max_bytes=10))  # refused on the text's length
    with pytest.raises(ImageError, match="10,000 pixels; at most 9,999"):
        decode_image(data, ImageLimits(max_pixels=9_999))


def test_a_decompression_bomb_is_refused_without_decoding_it() -> None:
    """A tiny file that declares a huge picture (a one-colour PNG of 20,000 x 20,000 compresses to a few KB)."""
    bomb = encoded(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match="pixels"):
        decode_image(bomb)


def test_the_hash_is_of_the_bytes_however_they_came() -> None:
    data = encoded(red(), "PNG")
    b64 = base64.b64encode(data).decode()
    assert image_hash(data) == image_hash(b64) == image_hash(f"data:image/png;base64,{b64}")
    assert image_hash(data) != image_hash(encoded(red((4, 8)), "PNG"))


def test_data_uri_names_the_real_format_and_round_trips() -> None:
    data = encoded(red(), "WEBP")
    uri = data_uri(data)
    assert uri.startswith("data:image/webp;base64,") and image_bytes(uri) == data
    with pytest.raises(ImageError):
        data_uri(b"not an image")


def test_image_properties() -> None:
    props = image_properties(decode_image(encoded(Image.new("RGB", (5, 3), (255, 255, 255)), "PNG")))
    assert props == {"width": 5.0, "height": 3.0, "brightness": 255.0, "channels": 3.0}


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3), ("RGBA", 4), ("P", 3)])
def test_channels_are_those_sent_though_every_picture_decodes_to_rgb(mode: str, channels: int) -> None:
    picture = decode_image(encoded(Image.new(mode, (6, 4)), "PNG"))
    assert picture.mode == "RGB"
    assert image_properties(picture)["channels"] == channels


def test_a_thumbnail_keeps_its_originals_size_and_channels() -> None:
    """The invocation log keeps a small JPEG of an image call; the drift report reads the original's width, height
    and channels from it, and the brightness from its pixels."""
    original = decode_image(encoded(Image.new("RGBA", (900, 600), (40, 40, 40, 255)), "PNG"))
    thumbnail = decode_image(thumbnail_uri(original))
    assert min(thumbnail.size) == 224  # the picture is small ...
    props = image_properties(thumbnail)
    assert (props["width"], props["height"], props["channels"]) == (900.0, 600.0, 4.0)  # ... its figures are not
    assert props["brightness"] == pytest.approx(40, abs=2)
    again = image_properties(decode_image(thumbnail_uri(thumbnail)))  # a thumbnail of a thumbnail still knows
    assert (again["width"], again["height"], again["channels"]) == (900.0, 600.0, 4.0)
