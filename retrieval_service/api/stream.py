"""Tar streaming of source images: ``<source_id>.<ext>`` members in request order, one file in memory.

The archive is plain ustar (readable by ``tar``, Python's ``tarfile`` in stream mode ``r|``). Small members
are coalesced into chunks of about ``CHUNK`` bytes so a stream of thumbnails is not one write per 512-byte
header.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from services.errors import SJFTError

log = logging.getLogger("retrieval_service")

BLOCK = 512
CHUNK = 256 * 1024


class StreamAborted(Exception):  # noqa: N818 - it names what happened to the response
    """A streamed response must end without its final chunk (already logged). Deliberately no SJFTError:
    an error handler would try to answer it, and the response has already started."""


def member_name(source_id: int, ext: str) -> str:
    ext = ext.lstrip(".").lower()
    return f"{source_id}.{ext}" if ext else str(source_id)


def content_type(ext: str) -> str:
    guessed, _ = mimetypes.guess_type(f"x.{ext.lstrip('.').lower()}")
    return guessed or "application/octet-stream"


def tar_header(name: str, size: int) -> bytes:
    """A ustar header (mode 0644, mtime 0: same ids, same bytes), byte-identical to ``TarInfo.tobuf``.

    Built directly: ``tobuf`` cost a third of the per-image time when streaming thumbnails.
    """
    encoded = name.encode("utf-8")
    if len(encoded) > 100 or size >= 8**11:
        raise ValueError(f"tar member {name!r} of {size} bytes does not fit a ustar header")
    header = bytearray(BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"  # uid
    header[116:124] = b"0000000\0"  # gid
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"  # mtime
    header[148:156] = b" " * 8  # checksum field counts as spaces while summing
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


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
        except (OSError, SJFTError) as exc:
            # Headers are already sent: the only signal left is to abort the response (no final chunk, no
            # tar trailer), which the client sees as a broken stream, never as a clean short archive. The
            # cause is the corpus, not a bug: one warning line, no traceback (RequestContext ends it).
            log.warning("aborting a tar stream at source %d: %s", source_id, exc)
            raise StreamAborted(f"source {source_id}: {exc}") from None
        buffer += tar_header(member_name(source_id, ext), len(data))
        buffer += data
        buffer += b"\0" * (-len(data) % BLOCK)
        on_member()
        if len(buffer) >= CHUNK:
            yield bytes(buffer)
            buffer.clear()
    buffer += b"\0" * (2 * BLOCK)  # end-of-archive marker
    yield bytes(buffer)
