"""Segment's raw archive: `segment-logs/<source>/<UTC-day-epoch-ms>/<file>.gz`, gzipped NDJSON.

This is the layout of Segment's S3 destination, so archives written by `segloop collector`
and ones downloaded from Segment load the same way. The writer appends one gzip *member*
per flush and fsyncs it before the collector answers 200; a concatenation of gzip members
is still one valid gzip file, and a crash can only tear the last member, which holds no
acknowledged message. The reader therefore stops at the last complete member and reports
where that is, so a file that is still growing can be loaded incrementally by byte offset.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

SEGMENT_LOGS = "segment-logs"
DAY_MS = 86_400_000


def day_partition(epoch_ms: int) -> int:
    """The UTC day (as epoch milliseconds at midnight) a message received then belongs to."""
    return epoch_ms - epoch_ms % DAY_MS


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs_durably(path: Path) -> None:
    """Create a directory tree and fsync each new entry's parent so it survives a crash."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        _fsync_dir(folder.parent)


class _OpenFile:
    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        _fsync_dir(path.parent)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)


class ArchiveWriter:
    """Appends NDJSON lines to per-source, per-day gzip files, durably.

    Not thread-safe: the collector calls it from its single commit thread. Each process
    writes new files (never appends to a file an earlier, possibly crashed, run left), and
    a file is closed when it reaches ``max_file_bytes`` or when ``rotate()`` is called.
    """

    MAX_FILE_BYTES = 64 * 1024 * 1024
    COMPRESS_LEVEL = 6

    def __init__(self, root: str | Path, max_file_bytes: int | None = None, fsync: bool = True):
        self.root = Path(root) / SEGMENT_LOGS
        self.max_file_bytes = max_file_bytes or self.MAX_FILE_BYTES
        self.fsync = fsync
        self._files: dict[tuple[str, int], _OpenFile] = {}
        self.members_written = 0

    def _file_for(self, source: str, day_ms: int) -> _OpenFile:
        key = (source, day_ms)
        current = self._files.get(key)
        if current is not None and current.size < self.max_file_bytes:
            return current
        if current is not None:
            current.close()
        folder = self.root / source / str(day_ms)
        _mkdirs_durably(folder)
        name = f"{int(time.time() * 1000)}-{secrets.token_hex(4)}.gz"
        opened = _OpenFile(folder / name)
        self._files[key] = opened
        return opened

    def append(self, groups: dict[tuple[str, int], list[bytes]]) -> None:
        """Write each (source, day)'s lines as one gzip member, then fsync every file touched."""
        touched: list[_OpenFile] = []
        for (source, day_ms), lines in groups.items():
            if not lines:
                continue
            compressor = zlib.compressobj(self.COMPRESS_LEVEL, zlib.DEFLATED, 31)
            payload = b"".join(line + b"\n" for line in lines)
            member = compressor.compress(payload) + compressor.flush()
            target = self._file_for(source, day_ms)
            target.write(member)
            touched.append(target)
            self.members_written += 1
        if self.fsync:
            for target in touched:
                os.fsync(target.fd)

    def rotate(self) -> None:
        """Close the open files; the next append starts new ones."""
        for opened in self._files.values():
            opened.close()
        self._files.clear()

    def close(self) -> None:
        self.rotate()


# -- reading ------------------------------------------------------------------------------


@dataclass
class ArchiveRead:
    """What one read of one archive file gave."""

    path: Path
    messages: list[dict[str, Any]] = field(default_factory=list)
    start_offset: int = 0
    end_offset: int = 0  # byte offset after the last complete gzip member read
    size: int = 0
    bad_lines: int = 0
    bad: list[str] = field(default_factory=list)  # those lines as text, for the rejects table
    problem: str | None = None  # "torn" (incomplete last member) or "corrupt"

    @property
    def complete(self) -> bool:
        return self.end_offset >= self.size


def iter_members(data: bytes, start: int = 0, chunk: int = 1 << 16) -> Iterator[tuple[bytes, int]]:
    """Yield (decompressed member, end offset) for each complete gzip member after ``start``.

    Raises ``EOFError`` at an incomplete (torn) member and ``zlib.error`` at a corrupt one;
    members before it have been yielded already.
    """
    pos = start
    total = len(data)
    while pos < total:
        decompressor = zlib.decompressobj(31)
        parts: list[bytes] = []
        cursor = pos
        while not decompressor.eof and cursor < total:
            piece = data[cursor : cursor + chunk]
            parts.append(decompressor.decompress(piece))
            cursor += len(piece)
        if not decompressor.eof:
            raise EOFError(f"incomplete gzip member at byte {pos}")
        end = cursor - len(decompressor.unused_data)
        yield b"".join(parts), end
        pos = end


# orjson turns integers beyond 64 bits into floats (digits lost); a line with a run of 19+
# digits is parsed again by the standard library, which keeps them exactly.
_LONG_DIGITS = re.compile(rb"\d{19}")
_DIGITS_ONLY = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))  # digit -> b"0", else b" "
_RUN_OF_19 = b"0" * 19


def has_long_number(data: bytes) -> bool:
    """Whether ``data`` holds a run of 19+ digits (10x faster than the regex on a member)."""
    return _RUN_OF_19 in data.translate(_DIGITS_ONLY)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is beyond a double")
    return value


def parse_line(line: bytes, exact: bool = False) -> Any:
    """One NDJSON line; ``exact`` keeps integers of any size (slower, for lines that need it)."""
    if exact and _LONG_DIGITS.search(line):
        try:
            return json.loads(line, parse_constant=_no_constant, parse_float=_exact_float)
        except (ValueError, RecursionError) as exc:
            raise orjson.JSONDecodeError(str(exc), line.decode("utf-8", "replace"), 0) from None
    return orjson.loads(line)


def read_archive_file(path: str | Path, offset: int = 0) -> ArchiveRead:
    """Read the complete gzip members of an archive file from a byte offset.

    A torn or corrupt tail is not an error: reading stops there and ``problem`` says why.
    Lines that are not JSON objects are counted in ``bad_lines``, kept as text in ``bad``
    and skipped. Integers
    beyond 64 bits are read exactly.
    """
    file = Path(path)
    data = file.read_bytes()
    result = ArchiveRead(path=file, start_offset=offset, end_offset=offset, size=len(data))
    try:
        for payload, end in iter_members(data, offset):
            exact = has_long_number(payload)
            for line in payload.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    message = parse_line(line, exact)
                except orjson.JSONDecodeError:
                    message = None
                if isinstance(message, dict):
                    result.messages.append(message)
                else:
                    result.bad_lines += 1
                    result.bad.append(line.decode("utf-8", "backslashreplace"))
            result.end_offset = end
    except EOFError:
        result.problem = "torn"
    except zlib.error:
        result.problem = "corrupt"
    return result


@dataclass(frozen=True)
class ArchiveFile:
    """One `.gz` file found under a path, with the source its folder names (if any)."""

    path: Path
    key: str  # stable name for incremental loading: from `segment-logs/` on, else absolute
    source: str | None


def find_archive_files(path: str | Path) -> list[ArchiveFile]:
    """Every `.gz` file under ``path`` (or ``path`` itself), oldest day first."""
    root = Path(path)
    if root.is_file():
        candidates: Iterable[Path] = [root]
    elif root.is_dir():
        candidates = sorted(root.rglob("*.gz"), key=_sort_key)
    else:
        return []
    return [_describe(file.resolve()) for file in candidates]


def _sort_key(file: Path) -> tuple[str, str, str]:
    return (file.parent.parent.name, file.parent.name.zfill(16), file.name)


def _describe(file: Path) -> ArchiveFile:
    parts = file.parts
    if SEGMENT_LOGS in parts:
        at = len(parts) - 1 - parts[::-1].index(SEGMENT_LOGS)
        rel = parts[at:]
        source = rel[1] if len(rel) >= 4 else None
        return ArchiveFile(file, "/".join(rel), source)
    return ArchiveFile(file, str(file), None)


def read_all_messages(path: str | Path) -> list[dict[str, Any]]:
    """Every complete message under a path (a file or a folder); for tests and tools."""
    out: list[dict[str, Any]] = []
    for archive in find_archive_files(path):
        out.extend(read_archive_file(archive.path).messages)
    return out


@dataclass
class ArchiveSummary:
    """What an archive holds: counts per call type and per track event, and a few samples."""

    messages: int = 0
    by_call: dict[str, int] = field(default_factory=dict)
    by_event: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


def summarize_archive(path: str | Path, samples: int = 2) -> ArchiveSummary:
    """Count the messages under a path by call and event (for the demo and quick checks).

    Samples are the first messages of distinct call types, so two samples show two kinds.
    """
    summary = ArchiveSummary()
    seen_calls: set[str] = set()
    for archive in find_archive_files(path):
        for message in read_archive_file(archive.path).messages:
            summary.messages += 1
            call = str(message.get("type", "unknown"))
            summary.by_call[call] = summary.by_call.get(call, 0) + 1
            if call == "track":
                event = str(message.get("event", ""))
                summary.by_event[event] = summary.by_event.get(event, 0) + 1
            if len(summary.samples) < samples and call not in seen_calls:
                seen_calls.add(call)
                summary.samples.append(message)
    return summary
