"""Tar streaming of source images: ``<source_id>.<ext>`` members in request order, one file in memory.

The archive is plain ustar (readable by ``tar``, Python's ``tarfile`` in stream mode ``r|``). Small members
are coalesced into chunks of about ``CHUNK`` bytes so a stream of thumbnails is not one write per 512-byte
header.
"""

from __future__ import annotations

import logging
import mimetypes
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

log = logging.getLogger("retrieval_service")

BLOCK = 512
CHUNK = 256 * 1024


def member_name(source_id: int, ext: str) -> str:
    ext = ext.lstrip(".").lower()
    return f"{source_id}.{ext}" if ext else str(source_id)


def content_type(ext: str) -> str:
    guessed, _ = mimetypes.guess_type(f"x.{ext.lstrip('.').lower()}")
    return guessed or "application/octet-stream"


def tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0  # deterministic archives: same ids, same bytes
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def stream_tar(
    items: Sequence[tuple[int, str]],
    open_source: Callable[[int], BinaryIO],
    on_member: Callable[[], None] = lambda: None,
) -> Iterator[bytes]:
    """Yield a tar of ``(source_id, ext)`` items; each file is read whole, then released before the next."""
    buffer = bytearray()
    for source_id, ext in items:
        try:
            with open_source(source_id) as stream:
                data = stream.read()
        except OSError:
            # Headers are already sent: the only signal left is to end the stream without the tar trailer.
            log.exception("source %d became unreadable mid-stream; aborting the tar", source_id)
            raise
        buffer += tar_header(member_name(source_id, ext), len(data))
        buffer += data
        buffer += b"\0" * (-len(data) % BLOCK)
        on_member()
        if len(buffer) >= CHUNK:
            yield bytes(buffer)
            buffer.clear()
    buffer += b"\0" * (2 * BLOCK)  # end-of-archive marker
    yield bytes(buffer)
