"""Loading images and checking them before they reach the model.

Stage 10. Mirrors vllm/multimodal/image.py and the loaders of vllm/multimodal/media/image.py.
An image arrives as a PIL object (offline API), a `data:image/...;base64,` URL (the OpenAI API)
or a `file://` path, which the server opens only inside the directory its operator allowed
(vLLM's --allowed-local-media-path). Nothing is fetched from the network. Every way an image can
be wrong raises a ValueError that says what and why, before the request is queued: a format we do
not decode, bytes that do not decode, an image too large. Next: hasher.py.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# Larger images are resized to the vision tower's input anyway; this only bounds the decode.
MAX_IMAGE_PIXELS = 4096 * 4096


def check_image(image: Image.Image) -> Image.Image:
    """Reject oversized images; return the image in RGB, the layout the image processor reads."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"an image must be a PIL.Image.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image is empty ({image.width}x{image.height} pixels)")
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"image is too large: {image.width}x{image.height} pixels, the limit is "
            f"{MAX_IMAGE_PIXELS} pixels (4096x4096)"
        )
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image_bytes(data: bytes) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...)."""
    try:
        image = Image.open(io.BytesIO(data))
        fmt = image.format
        if fmt not in SUPPORTED_FORMATS:
            raise ValueError(
                f"unsupported image format {fmt}; supported: {', '.join(SUPPORTED_FORMATS)}"
            )
        if image.width * image.height > MAX_IMAGE_PIXELS:
            return check_image(image)  # raises before the pixels are decoded
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"image bytes could not be decoded as an image: {e}") from e
    return check_image(image)


def load_image_url(url: str, allowed_local_media_path: str | None = None) -> Image.Image:
    """A data URL, or a file:// URL under `allowed_local_media_path`; never the network."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            raise ValueError(
                "image data URLs must look like data:image/<format>;base64,<data>, got "
                f"{header[:40]!r}"
            )
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"image data URL is not valid base64: {e}") from e
        return load_image_bytes(data)
    if url.startswith("file://"):
        if not allowed_local_media_path:
            raise ValueError(
                "file:// image URLs are disabled; the server operator can allow a directory "
                "with --allowed-local-media-path"
            )
        root = Path(allowed_local_media_path).resolve()
        path = Path(url.removeprefix("file://")).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"image path {path} is outside the allowed directory {root}")
        if not path.is_file():
            raise ValueError(f"image file {path} does not exist")
        return load_image_bytes(path.read_bytes())
    raise ValueError(
        "image URLs must be data:image/...;base64 URLs (or file:// when allowed); "
        f"vllm_mini never fetches from the network, got {url[:60]!r}"
    )
