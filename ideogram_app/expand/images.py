"""An image for `describe`, as the data URL a vision chat model reads. The upload bounds of
`limits.py` are checked before decoding (bytes, then header pixels), and the picture is downscaled
so its longer side is at most `max_side`: vision models tile or resize anyway, and a 40-megapixel
photo would be a 100 MB request."""
from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ideogram_app.limits import LimitError, Limits

from .result import InputError

DEFAULT_MAX_SIDE = 1024


def image_data_url(image: str | Path | bytes | Image.Image, max_side: int = DEFAULT_MAX_SIDE,
                   limits: Limits | None = None) -> tuple[str, int, int]:
    """(JPEG data URL of the downscaled image, original width, original height)."""
    limits = limits or Limits()
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16:
        raise InputError(f"max_side must be a whole number of pixels of at least 16, got {max_side!r}")
    name = "the image"
    try:
        if isinstance(image, Image.Image):
            picture = image
        else:
            if isinstance(image, (str, Path)):
                name = str(image)
                data = Path(image).read_bytes()
            elif isinstance(image, (bytes, bytearray)):
                data = bytes(image)
            else:
                raise InputError(f"describe() takes an image path, bytes or a PIL image, got {type(image).__name__}")
            limits.check_upload_bytes(name, len(data))
            picture = Image.open(io.BytesIO(data))
        limits.check_image_pixels(name, *picture.size)
        picture = ImageOps.exif_transpose(picture)  # the size a viewer shows, after the camera's rotation
        width, height = picture.size
        if picture.mode != "RGB":
            rgba = picture.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))  # transparency shown as white, not black
            flat.paste(rgba, mask=rgba.getchannel("A"))
            picture = flat
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
    except LimitError as err:
        raise InputError(str(err)) from None
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise InputError(f"cannot read {name} as an image: {err}") from None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), width, height
