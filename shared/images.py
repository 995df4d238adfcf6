"""Conditioning images: checked before anything is stored, then fitted to the video's size.

Checks run in the order that refuses bad input cheapest: byte size, format, pixel count from the
header (decompression bombs never get decoded), then a full decode.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, ImageOps

from shared.errors import InvalidRequest, PayloadTooLarge

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


def decode_data_url(url: str, *, max_bytes: int, param: str = "image_url") -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidRequest(f"invalid '{param}': a data URL must look like data:image/png;base64,<data>", param=param)
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise PayloadTooLarge(f"invalid '{param}': image larger than {max_bytes} bytes", param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"invalid '{param}': the data URL's payload is not valid base64", param=param) from None


def load_image(data: bytes, *, max_bytes: int, max_pixels: int, param: str = "input_reference") -> Image.Image:
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"invalid '{param}': {len(data)} bytes, at most {max_bytes}", param=param)
    if not data:
        raise InvalidRequest(f"invalid '{param}': the image is empty", param=param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format
            width, height = image.size
    except Image.DecompressionBombError:
        raise InvalidRequest(f"invalid '{param}': image has too many pixels", param=param) from None
    except Exception:
        raise InvalidRequest(f"invalid '{param}': not a decodable image (PNG, JPEG, WebP, GIF or BMP)", param=param) from None
    if fmt not in ALLOWED_FORMATS:
        raise InvalidRequest(f"invalid '{param}': image format {fmt!r} is not accepted; use PNG, JPEG or WebP", param=param)
    if width * height > max_pixels:
        raise InvalidRequest(
            f"invalid '{param}': image is {width}x{height} = {width * height} pixels, at most {max_pixels}",
            param=param,
        )
    try:
        image.load()
    except Exception:
        raise InvalidRequest(f"invalid '{param}': the image data is truncated or corrupt", param=param) from None
    return ImageOps.exif_transpose(image).convert("RGB")


def fit_to(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scales to cover width x height, then crops the centre: Wan conditions on the exact frame size."""
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def to_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
