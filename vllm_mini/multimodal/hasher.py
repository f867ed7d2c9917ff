"""An image's content hash: the same pixels give the same name, whatever object holds them.

Stage 10. Mirrors vllm/multimodal/hasher.py. Two requests that send the same picture (as a PIL
object, a data URL or a file) must find each other's encoder output and KV blocks, and two
different pictures must never share them; so the key is a hash of what the model sees: the
decoded pixels, their mode and size, not the file bytes or Python's object identity.
Next: processing.py.
"""

from __future__ import annotations

import hashlib

from PIL import Image


def hash_image(image: Image.Image) -> str:
    """sha256 over (mode, width, height, raw pixel bytes), hex encoded."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()
