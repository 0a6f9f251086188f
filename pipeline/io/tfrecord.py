"""TFRecord framing and Earth Engine's gzipped shards, read as a stream with every checksum checked.

A corrupt record (intact framing, bad data checksum) is reported and skipped; a broken frame or
compression ends the shard with a ShardError carrying the number of records read before it, so the
reader keeps those. Writing (`frame_record`) is used by the sample generator and the tests.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from pipeline.errors import ShardError
from pipeline.io.filesystem import open_read

GZIP_MAGIC = b"\x1f\x8b"


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclass(frozen=True)
class CorruptRecord:
    """A record whose length framing is intact but whose data fails its checksum (skipped, reported)."""

    position: int
    reason: str


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    remaining = n
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def iter_tfrecords(stream: BinaryIO, name: str = "<stream>") -> Iterator[bytes | CorruptRecord]:
    """Records of a TFRecord stream (already decompressed), checking both checksums of every frame.

    Yields the record bytes, or a CorruptRecord where only the data checksum fails (the frame is
    skipped and reading goes on). A broken length header, a truncated frame or a decompression
    error raises ShardError naming the file and how many records were read before it.
    """
    position = 0
    while True:
        try:
            header = _read_exact(stream, 12)
            if not header:
                return
            if len(header) < 12:
                raise ShardError(f"{name}: truncated after {position} record(s) (a partial record header)", position)
            length, length_crc = struct.unpack("<QI", header)
            if _masked_crc(header[:8]) != length_crc:
                raise ShardError(f"{name}: not a TFRecord file or corrupt at record {position} (length checksum)", position)
            body = _read_exact(stream, length + 4)
        except ShardError:
            raise
        except (OSError, EOFError, zlib.error, ValueError) as error:
            raise ShardError(f"{name}: unreadable after {position} record(s) ({type(error).__name__}: {error})", position) from None
        if len(body) < length + 4:
            raise ShardError(f"{name}: truncated in record {position} ({len(body)} of {length + 4} bytes)", position)
        data = body[:length]
        if _masked_crc(data) != struct.unpack("<I", body[length:])[0]:
            yield CorruptRecord(position, f"{name}: record {position} fails its data checksum")
        else:
            yield data
        position += 1


def frame_record(data: bytes) -> bytes:
    """One TFRecord frame: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))


class _Gunzip:
    """A streaming gzip reader over a raw file handle: `read(n)` decompresses only as far as needed.

    Unlike a read-ahead decompressor, records before a corrupt or truncated spot are delivered before
    the error is raised (every record still passes its own TFRecord checksums). Handles multi-member
    gzip. Errors: zlib.error for corrupt data, EOFError for a truncated stream.
    """

    def __init__(self, raw: BinaryIO, chunk: int = 1 << 20):
        self._raw = raw
        self._chunk = chunk
        self._inflate = zlib.decompressobj(wbits=31)
        self._input = b""
        self._buffer = bytearray()
        self._done = False

    def _fill(self, n: int) -> None:
        while len(self._buffer) < n and not self._done:
            if self._inflate.eof:  # end of a gzip member: another one, or the end of the file
                rest = self._inflate.unused_data or self._raw.read(self._chunk)
                if not rest.strip(b"\x00"):
                    self._done = True
                    break
                self._inflate = zlib.decompressobj(wbits=31)
                self._input = rest
                continue
            if not self._input:
                self._input = self._raw.read(self._chunk)
                if not self._input:
                    raise EOFError("the gzip stream ends before its end marker (truncated file)")
            out = self._inflate.decompress(self._input, n - len(self._buffer))
            self._input = self._inflate.unconsumed_tail
            self._buffer += out

    def read(self, n: int) -> bytes:
        """Up to n decompressed bytes (fewer only at the end of the stream)."""
        self._fill(n)
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def close(self) -> None:
        """Close the underlying file."""
        self._raw.close()


def open_shard(path: str) -> BinaryIO:
    """Open a shard for reading through FileSystems; `.gz` shards are decompressed as a stream."""
    try:
        raw = open_read(path)
    except Exception as error:  # noqa: BLE001 - Beam and GCS raise their own error types
        raise ShardError(f"{path}: cannot open ({error})", 0) from None
    return _Gunzip(raw) if path.endswith(".gz") else raw


def read_shard(path: str) -> Iterator[bytes | CorruptRecord]:
    """Records of one shard file (see `iter_tfrecords`); a gzipped file named `.tfrecord` is a ShardError."""
    handle = open_shard(path)
    try:
        if not path.endswith(".gz"):
            head = handle.read(2)
            if head == GZIP_MAGIC:
                raise ShardError(f"{path}: the file is gzipped but not named .tfrecord.gz", 0)
            handle.seek(0)
        yield from iter_tfrecords(handle, path)
    finally:
        handle.close()


def uncompressed_size(path: str, size: int) -> int:
    """Uncompressed size of a shard: its size, or for gzip the trailer's ISIZE (mod 2^32)."""
    if not path.endswith(".gz"):
        return size
    with open_read(path) as handle:
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    if len(tail) != 4:
        raise ShardError(f"{path}: too short for a gzip file", 0)
    return struct.unpack("<I", tail)[0]
