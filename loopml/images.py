"""Image inputs: decode what a caller or a Label Studio task holds into an RGB picture, or say clearly why not.

An image reaches LoopML as bytes (a file upload, a file on disk), as base64 text (``{"image": "..."}`` in an
API call) or as a ``data:image/...;base64,`` URI (how LoopML stores images in Label Studio tasks, which Label
Studio renders as is). :func:`decode_image` turns any of them into a ``PIL.Image`` in RGB:

- PNG, JPEG, WebP and GIF (its first frame); anything else is refused;
- the EXIF orientation is applied (a phone photo stands upright);
- grey, palette and CMYK pictures become RGB; transparent ones are laid on white.

Every refusal is an :class:`ImageError` whose message says what was wrong (not an image, truncated, too many
bytes, too many pixels: a decompression bomb), so the serving API answers 4xx and a dataset check can name the
task. The checks on size come before any pixel is decoded.

An image's identity (:func:`image_hash`) is the sha256 of its encoded bytes, as a text's is of its text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # an encoded image
DEFAULT_MAX_PIXELS = 40_000_000  # width x height: a 40-megapixel photo; far beyond it is a decompression bomb
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+/-]*)(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)


class ImageError(ValueError):
    """An input that is not a usable image; the message is meant for the caller."""


class ImageTooLarge(ImageError):
    """An image over the byte or pixel limit (:class:`ImageLimits`)."""


@dataclass(frozen=True)
class ImageLimits:
    """How big an image may be: encoded bytes and decoded pixels."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_env(cls) -> ImageLimits:
        """``LOOPML_MAX_IMAGE_BYTES`` and ``LOOPML_MAX_IMAGE_PIXELS``, else the defaults."""
        from loopml.config import env_int

        return cls(
            env_int("LOOPML_MAX_IMAGE_BYTES", DEFAULT_MAX_BYTES), env_int("LOOPML_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)
        )


def image_bytes(value: str | bytes, limits: ImageLimits = ImageLimits()) -> bytes:
    """The encoded bytes of ``value``: bytes as they are, base64 text or a ``data:`` URI decoded.

    Raises :class:`ImageError` for text that is not base64 and for more than ``limits.max_bytes`` bytes (checked
    on the text's length first, so an oversized upload is not decoded).
    """
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        match = _DATA_URI.match(text)
        if match:
            text = text[match.end() :]
        elif text.startswith("data:"):
            raise ImageError("a data URI must be base64-encoded (data:image/...;base64,...)")
        if len(text) * 3 // 4 > limits.max_bytes + 3:
            raise ImageTooLarge(_too_big(len(text) * 3 // 4, limits))
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("not an image: the value is neither base64 nor a data:image URI") from None
    else:
        raise ImageError(f"an image is base64 text or bytes, not {type(value).__name__}")
    if not data:
        raise ImageError("the image is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(_too_big(len(data), limits))
    return data


def _too_big(size: int, limits: ImageLimits) -> str:
    return f"the image has {size:,} bytes; at most {limits.max_bytes:,} are accepted (LOOPML_MAX_IMAGE_BYTES)"


def image_hash(value: str | bytes, limits: ImageLimits = ImageLimits()) -> str:
    """The identity of an image: sha256 of its encoded bytes (the same file gives the same hash however it came)."""
    return hashlib.sha256(image_bytes(value, limits)).hexdigest()


def open_image(value: str | bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Open ``value`` and check its format and pixel count, decoding no pixel yet."""
    from PIL import Image, UnidentifiedImageError

    data = image_bytes(value, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"not an image LoopML reads; send one of {', '.join(FORMATS)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("the image declares too many pixels (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"not a readable image: {error}") from None
    width, height = picture.size
    if width < 1 or height < 1:
        raise ImageError(f"the image is {width}x{height} pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height:,} pixels; at most {limits.max_pixels:,} are accepted "
            "(LOOPML_MAX_IMAGE_PIXELS)"
        )
    return picture


def decode_image(value: str | bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """An RGB ``PIL.Image`` from ``value`` (see the module's docstring); :class:`ImageError` when it is not one."""
    from PIL import Image, ImageOps

    picture = open_image(value, limits)
    try:
        picture.seek(0)  # a GIF's (or an animated WebP's) first frame
        picture.load()
        picture = ImageOps.exif_transpose(picture)
        channels = _source_channels(picture)
        rgb = _rgb(picture)  # exif_transpose returned a copy: its info is this picture's own
        rgb.info[SOURCE_CHANNELS] = channels
        return rgb
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"the image is truncated or corrupt: {error}") from None


SOURCE_CHANNELS = "loopml_source_channels"  # in a decoded picture's ``info``: the channels the caller sent
_PROPERTIES_COMMENT = re.compile(rb"^loopml:w=(\d+);h=(\d+);c=(\d+)$")


def _source_channels(picture: Image.Image) -> int:
    """Channels of the picture as it was sent: 1 (grey), 3 (colour) or 4 (with transparency); a palette counts as
    what it holds. A thumbnail made by LoopML says its original's channels in its comment."""
    match = _PROPERTIES_COMMENT.match(picture.info.get("comment", b"") or b"")
    if match:
        return int(match.group(3))
    if picture.mode == "P":
        return 4 if "transparency" in picture.info else 3
    if "transparency" in picture.info and picture.mode in ("L", "RGB"):
        return len(picture.getbands()) + 1
    return len(picture.getbands()) - (1 if picture.mode == "CMYK" else 0)


def _rgb(picture: Image.Image) -> Image.Image:
    from PIL import Image

    if picture.mode == "RGB":
        return picture
    if picture.mode == "P":
        picture = picture.convert("RGBA")
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return picture.convert("RGB")


def data_uri(data: bytes, limits: ImageLimits = ImageLimits()) -> str:
    """``data:image/<format>;base64,...`` for encoded image ``data`` (checked to be an image LoopML reads): how
    LoopML puts an image into a Label Studio task."""
    picture = open_image(data, limits)
    mime = MIME[str(picture.format)]
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


THUMBNAIL_PIXELS = 224  # the shorter side of the thumbnail an image invocation is logged with: the encoder's input


def thumbnail_uri(picture: Image.Image, short_side: int = THUMBNAIL_PIXELS) -> str:
    """A JPEG ``data:`` URI of ``picture`` (RGB) shrunk to at most ``short_side`` pixels on its shorter side: what
    the invocation log keeps of an image (10-20 kB instead of the whole upload). It is what a reviewer sees in
    Label Studio, and a reviewed call trains on it: the default encoder reads 224 pixels on the shorter side, so
    it sees what it saw when the call was answered. The JPEG's comment keeps the original's width, height and
    channels (:func:`image_properties` reads them back), for the drift report."""
    small = picture.copy()
    scale = short_side / min(small.size)
    if scale < 1:
        small.thumbnail((round(small.width * scale), round(small.height * scale)))
    props = image_properties(picture, brightness=False)
    comment = f"loopml:w={props['width']:.0f};h={props['height']:.0f};c={props['channels']:.0f}"
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85, comment=comment.encode("ascii"))
    return f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


IMAGE_PROPERTIES = ("width", "height", "brightness", "channels")


def image_properties(picture: Image.Image, *, brightness: bool = True) -> dict[str, float]:
    """Width, height, mean brightness (0-255, of the grey picture) and channel count (as sent: 1 grey, 3 colour,
    4 with transparency) of a picture from :func:`decode_image`: the image properties the drift report follows.
    For a thumbnail LoopML logged, width, height and channels are its original's."""
    from PIL import ImageStat

    width, height = picture.size
    channels = picture.info.get(SOURCE_CHANNELS)
    match = _PROPERTIES_COMMENT.match(picture.info.get("comment", b"") or b"")
    if match:
        width, height, channels = (int(g) for g in match.groups())
    props = {
        "width": float(width),
        "height": float(height),
        "brightness": float(ImageStat.Stat(picture.convert("L")).mean[0]) if brightness else float("nan"),
        "channels": float(channels if channels is not None else _source_channels(picture)),
    }
    return props
