"""Uploaded files under the request limits (`Limits`), with messages that name the file as the
user called it and the limit, never a server path.

Three bounds apply, in this order:
- bytes: Gradio's upload route refuses a file over `max_file_size`, which the launch sets from
  `limits.max_upload_bytes`; handlers that read a file check again (`read_text_upload`), because
  the events can also be called with files already on the server;
- decoded pixels: `CheckedImage` reads an uploaded image's size from its header before Gradio's
  own preprocessing decodes it (Gradio converts every image that is not RGB), and refuses one over
  `limits.max_image_pixels`;
- Pillow's own bomb check (`limit_pillow`) is set from the same limit, so any other decode in the
  process (a PNG opened for its metadata, an img2img input) refuses images beyond twice the limit
  before decoding them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from ideogram_app.limits import DEFAULT_LIMITS, LimitError, Limits

from .markup import escape


def limit_pillow(limits: Limits) -> None:
    """Set Pillow's process-wide decompression-bomb bound from `limits` (Pillow warns above it and
    refuses above twice it, at `Image.open`, before decoding)."""
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels


def upload_name(path: str | os.PathLike) -> str:
    """What the user called an uploaded file (Gradio keeps the original name as the last part of the
    path inside its cache); messages use this, never the server path."""
    return Path(path).name


def check_image_file(path: str | os.PathLike, what: str, limits: Limits) -> None:
    """Raise LimitError/ValueError unless `path` is an image within the limits, reading only its
    header. `what` names the control or parameter in the message."""
    name = upload_name(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        raise ValueError(f"{what}: the upload {name} is gone from the server; upload it again") from None
    limits.check_upload_bytes(f"{what} ({name})", size)
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except Image.DecompressionBombError:
        raise LimitError(f"{what} ({name}) has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP; images up "
                         f"to {limits.max_image_pixels / 1e6:.0f} MP are accepted") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"{what}: {name} is not an image this app can read (PNG, JPEG or WebP)") from None
    limits.check_image_pixels(f"{what} ({name})", width, height)


def read_text_upload(path: str | os.PathLike, limits: Limits) -> str:
    """The text of an uploaded caption file, checked for size before it is read (UTF-8; raises
    LimitError/ValueError naming the file)."""
    name = upload_name(path)
    try:
        limits.check_upload_bytes(name, os.path.getsize(path))
        with open(path, encoding="utf-8") as file:
            text = file.read(limits.max_caption_chars + 1)
    except UnicodeDecodeError as err:
        raise ValueError(f"{name} is not UTF-8 text (byte {err.start})") from None
    except OSError:
        raise ValueError(f"{name} cannot be read on the server; upload it again") from None
    limits.check_caption_chars(text)
    return text


class CheckedImage(gr.Image):
    """`gr.Image` whose upload is checked against the limits before Gradio decodes it; errors name
    the control's label and the limit. Same front end as gr.Image (`is_template`)."""

    is_template = True

    def __init__(self, *, limits: Limits = DEFAULT_LIMITS, **kwargs: Any):
        # Keywords only: Gradio's component metaclass records (and replays) constructor arguments by name.
        # A private attribute: Gradio sends every attribute named like an __init__ parameter to the page.
        self._limits = limits
        super().__init__(**kwargs)

    def get_config(self, cls=None) -> dict[str, Any]:
        """gr.Image's properties (Gradio reads them from the signature of `cls.__init__`)."""
        return super().get_config(cls or gr.Image)

    def preprocess(self, payload):
        if payload is None:
            return None
        what = self.label or "image"
        if payload.path:
            try:
                check_image_file(payload.path, what, self._limits)
            except ValueError as err:  # shown as a toast (HTML), and the file name is the user's
                raise gr.Error(escape(str(err))) from None
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError:
            raise gr.Error(f"{what}: the image is larger than {self._limits.max_image_pixels / 1e6:.0f} MP, "
                           "the most this app accepts") from None
        except Exception as err:  # Gradio's own decoding; its message would quote the server path
            raise gr.Error(f"{what}: the image cannot be read ({type(err).__name__})") from None
