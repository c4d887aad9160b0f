"""Fetching media from a source network and fitting images under a target's byte limit."""

from __future__ import annotations

import io

import aiohttp
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024


class MediaError(Exception):
    """A media file could not be fetched or made to fit; the post carries a link instead."""


async def download(
    session: aiohttp.ClientSession, url: str, limit: int = MAX_DOWNLOAD_BYTES
) -> bytes:
    """Fetch a file, refusing anything bigger than `limit` before reading it all into memory."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as response:
            if response.status != 200:
                raise MediaError(f"download of {url} answered HTTP {response.status}")
            if response.content_length is not None and response.content_length > limit:
                raise MediaError(f"{url} is {response.content_length} bytes, over {limit}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(65536):
                size += len(chunk)
                if size > limit:
                    raise MediaError(f"{url} is over {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise MediaError(f"download of {url} failed: {type(error).__name__}") from error


def image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None


def fit_image(data: bytes, mime: str, max_bytes: int) -> tuple[bytes, str]:
    """Return the image unchanged when it fits, else a JPEG re-encoded and scaled until it does.

    Quality is lowered first (cheap, keeps resolution), then the image is scaled down, so that a photo
    loses as little as possible; transparency is flattened on white because JPEG has none.
    """
    if len(data) <= max_bytes:
        return data, mime
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode not in ("RGB", "L"):
                background = Image.new("RGB", image.size, "white")
                rgba = image.convert("RGBA")
                background.paste(rgba, mask=rgba.getchannel("A"))
                image = background
            scale = 1.0
            while True:
                size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
                resized = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
                for quality in (90, 80, 70, 60):
                    out = io.BytesIO()
                    resized.save(out, format="JPEG", quality=quality, optimize=True)
                    if out.tell() <= max_bytes:
                        return out.getvalue(), "image/jpeg"
                if size == (1, 1):
                    raise MediaError("image cannot be made small enough")
                scale *= 0.75
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(f"not an image Pillow can read: {error}") from error
