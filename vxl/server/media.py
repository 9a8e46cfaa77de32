"""Media of a chat request: `file://` URLs (only under the allowed local media path, after resolving
symlinks) and `data:` URLs (base64), checked against the server's caps before any decoding. Remote URLs
are refused: the server never fetches anything.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import tempfile
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

from vxl.engine.video import check_container


VIDEO_SUFFIXES = {"mp4": ".mp4", "webm": ".webm", "x-matroska": ".mkv", "quicktime": ".mov", "x-msvideo": ".avi",
                  "mpeg": ".mpg", "ogg": ".ogv"}


class MediaError(ValueError):
    """A media problem with its HTTP status: 400 bad URL or data, 403 outside the allowed path, 413 over a cap."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_media"):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class MediaLimits:
    allowed_local_media_path: str | None = None
    max_frames: int = 256
    max_video_bytes: int = 512 * 2**20
    max_images: int = 64
    max_image_pixels: int = 1 << 25     # width x height of one image (33.5M: an 8K UHD frame fits)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: a video inline as base64 (4/3 of its bytes) and 1 MiB of JSON."""
        return self.max_video_bytes * 4 // 3 + 2**20


async def read_body(request, limit: int) -> bytes:
    """The request's body, read no further than `limit` bytes: a larger one (by its Content-Length, or as
    it arrives) is a 413 MediaError before the rest is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise MediaError(f"the request body ({declared} bytes) is over the server's cap of {limit} bytes", 413,
                         "too_large")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise MediaError(f"the request body is over the server's cap of {limit} bytes", 413, "too_large")
        parts.append(part)
    return b"".join(parts)


@dataclass
class Media:
    """Resolved media of one request: what goes into the engine request, the files to delete when the
    request ends, and a key per video identifying its content (a hash of its bytes, or a local file's path,
    size and modification time). A client's media `uuid` is never the key: another client could send other
    bytes under the same uuid and be answered about the first client's video."""
    fields: dict = field(default_factory=dict)
    temp_files: list[str] = field(default_factory=list)
    video_key: str | None = None
    on_cleanup: list = field(default_factory=list)        # callables run once when the request ends

    def cleanup(self) -> None:
        callbacks, self.on_cleanup = self.on_cleanup, []
        for callback in callbacks:
            callback()
        for path in self.temp_files:
            try:
                os.remove(path)
            except OSError:
                pass
        self.temp_files.clear()


def local_path(url: str, limits: MediaLimits) -> str:
    """The real path of a file:// URL, refused (403) unless it lies under the allowed media path."""
    if not limits.allowed_local_media_path:
        raise MediaError("file:// URLs are disabled: start the server with --allowed-local-media-path DIR",
                         403, "forbidden_path")
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise MediaError(f"file URL with a host is not supported: {url!r}")
    if "\x00" in unquote(parsed.path):
        raise MediaError("the file URL's path holds a NUL byte")
    path = os.path.realpath(unquote(parsed.path))
    root = os.path.realpath(limits.allowed_local_media_path)
    if os.path.commonpath([path, root]) != root:
        raise MediaError(f"{unquote(parsed.path)!r} is outside the allowed local media path", 403, "forbidden_path")
    if not os.path.isfile(path):
        raise MediaError(f"file not found: {unquote(parsed.path)!r}")
    return path


def data_bytes(url: str, kind: str, limit: int) -> tuple[str, bytes]:
    """(subtype, decoded bytes) of a base64 data URL of media type `kind` ("video" or "image")."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise MediaError(f"a data URL must look like data:{kind}/...;base64,<data>")
    mime = head[len("data:"):-len(";base64")]
    if not mime.startswith(kind + "/"):
        raise MediaError(f"expected a data:{kind}/... URL, got data:{mime}")
    if len(payload) * 3 // 4 > limit:
        raise MediaError(f"the {kind} is over the server's cap of {limit} bytes", 413, "too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"the {kind} data URL is not valid base64") from None
    if not data:
        raise MediaError(f"the {kind} data URL is empty")
    return mime.split("/", 1)[1], data


def video_container(head: bytes, what: str) -> str:
    """The container of a video's first bytes, or a 415 naming what they look like instead."""
    try:
        return check_container(head, what)
    except ValueError as exc:
        raise MediaError(str(exc), 415, "unsupported_media_type") from None


def resolve_video(url: str, media: Media, limits: MediaLimits) -> str:
    """A path the engine can open for this video URL (a temp file for a data URL); sets media.video_key."""
    if not isinstance(url, str):
        raise MediaError("video_url.url must be a string")
    if url.startswith("file:"):
        path = local_path(url, limits)
        size = os.path.getsize(path)
        if size > limits.max_video_bytes:
            raise MediaError(f"the video is over the server's cap of {limits.max_video_bytes} bytes", 413, "too_large")
        with open(path, "rb") as f:
            video_container(f.read(512), "the video file")
        stat = os.stat(path)
        media.video_key = f"file:{path}:{size}:{stat.st_mtime_ns}"
        return path
    if url.startswith("data:"):
        subtype, data = data_bytes(url, "video", limits.max_video_bytes)
        video_container(data[:512], "the video data URL")
        media.video_key = "sha256:" + hashlib.sha256(data).hexdigest()
        fd, path = tempfile.mkstemp(prefix="vxl-video-", suffix=VIDEO_SUFFIXES.get(subtype, ".mp4"))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        media.temp_files.append(path)
        return path
    raise MediaError("only file:// and data: video URLs are supported (the server fetches nothing)")


def check_image_size(image, limits: MediaLimits, what: str) -> None:
    """413 for an image over the pixel cap, from its header alone (before it is decoded)."""
    w, h = image.size
    if w * h > limits.max_image_pixels:
        raise MediaError(f"{what} is {w}x{h} = {w * h} pixels, over the server's cap of {limits.max_image_pixels}",
                         413, "too_large")


def resolve_image(url: str, limits: MediaLimits):
    """A path (file URL) or a PIL image (data URL); either refused over the pixel cap before decoding."""
    from PIL import Image
    if not isinstance(url, str):
        raise MediaError("image_url.url must be a string")
    if url.startswith("file:"):
        path = local_path(url, limits)
        try:
            with Image.open(path) as image:     # the header only; a file PIL cannot read fails in the engine
                check_image_size(image, limits, "the image file")
        except MediaError:
            raise
        except Exception:                   # PIL raises many kinds for junk bytes
            pass
        return path
    if url.startswith("data:"):
        _, data = data_bytes(url, "image", limits.max_video_bytes)
        try:
            image = Image.open(io.BytesIO(data))
        except Exception as exc:
            raise MediaError(f"the image data URL does not decode: {exc}") from None
        check_image_size(image, limits, "the image data URL")
        try:
            image.load()
        except Exception as exc:
            raise MediaError(f"the image data URL does not decode: {exc}") from None
        return image.convert("RGB")
    raise MediaError("only file:// and data: image URLs are supported (the server fetches nothing)")
