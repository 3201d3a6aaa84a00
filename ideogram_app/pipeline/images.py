"""Images in and out of the pipeline: the img2img start image (decoded under the limits) and the
conversions between PIL images and the [-1, 1] pixel tensors the VAE reads and writes."""
from __future__ import annotations

import os

import torch
from PIL import Image

from ideogram_app.limits import DEFAULT_LIMITS, Limits


def open_image(source: Image.Image | str | os.PathLike, limits: Limits = DEFAULT_LIMITS, what: str = "input_image") -> Image.Image:
    """An RGB image from a PIL image or a file. The pixel count is checked from the header, before the
    pixels are decoded, so a small file that unpacks to gigabytes is refused cheaply. Messages name the
    file as the caller passed it, never a resolved server path."""
    if isinstance(source, Image.Image):
        limits.check_image_pixels(what, *source.size)
        return source.convert("RGB")
    try:
        with Image.open(source) as image:
            limits.check_image_pixels(what, *image.size)
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"{what} {os.fspath(source)} does not exist") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{what} is larger than Pillow decodes safely") from None
    except OSError as err:
        raise ValueError(f"{what} {os.fspath(source)} is not an image Pillow can read ({err})") from None


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, then centre-crop to exactly that size (object-fit: cover)."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float32 in [-1, 1]."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(image.height, image.width, 3)
    return data.permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    data = ((pixels.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(row.numpy(), "RGB") for row in data]
