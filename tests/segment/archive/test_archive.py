"""Raw archives: Segment's S3 layout, one gzip member per flush, torn tails tolerated."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import orjson
import pytest

from segloop.segment.archive.files import (
    ArchiveWriter,
    day_partition,
    find_archive_files,
    read_all_messages,
    read_archive_file,
)

DAY = day_partition(1_764_000_000_000)


def lines(start: int, n: int) -> list[bytes]:
    return [orjson.dumps({"messageId": f"m{i}", "type": "track"}) for i in range(start, start + n)]


def ids(messages: list[dict]) -> list[str]:
    return [m["messageId"] for m in messages]


def test_day_partition_is_utc_midnight_in_epoch_ms():
    assert day_partition(86_400_000 * 3 + 5) == 86_400_000 * 3
    assert DAY % 86_400_000 == 0


def test_writer_uses_segment_layout_and_appends_members(tmp_path: Path):
    writer = ArchiveWriter(tmp_path)
    writer.append({("web", DAY): lines(0, 3)})
    writer.append({("web", DAY): lines(3, 2), ("app", DAY + 86_400_000): lines(10, 1)})
    writer.close()
    web = list((tmp_path / "segment-logs" / "web" / str(DAY)).glob("*.gz"))
    app = list((tmp_path / "segment-logs" / "app" / str(DAY + 86_400_000)).glob("*.gz"))
    assert len(web) == 1 and len(app) == 1
    assert writer.members_written == 3
    # Standard gzip tools read the concatenated members as one stream.
    assert gzip.decompress(web[0].read_bytes()).count(b"\n") == 5
    assert ids(read_archive_file(web[0]).messages) == ["m0", "m1", "m2", "m3", "m4"]


def test_each_writer_starts_new_files(tmp_path: Path):
    first = ArchiveWriter(tmp_path)
    first.append({("web", DAY): lines(0, 1)})
    first.close()
    second = ArchiveWriter(tmp_path)
    second.append({("web", DAY): lines(1, 1)})
    second.close()
    assert len(find_archive_files(tmp_path)) == 2
    assert sorted(ids(read_all_messages(tmp_path))) == ["m0", "m1"]


def test_files_rotate_at_the_size_limit(tmp_path: Path):
    writer = ArchiveWriter(tmp_path, max_file_bytes=1)
    for start in range(0, 30, 10):
        writer.append({("web", DAY): lines(start, 10)})
    writer.close()
    assert len(find_archive_files(tmp_path)) == 3
    assert len(read_all_messages(tmp_path)) == 30


def _two_member_file(tmp_path: Path) -> tuple[Path, int]:
    writer = ArchiveWriter(tmp_path)
    writer.append({("web", DAY): lines(0, 4)})
    (file,) = [a.path for a in find_archive_files(tmp_path)]
    boundary = file.stat().st_size
    writer.append({("web", DAY): lines(4, 4)})
    writer.close()
    return file, boundary


@pytest.mark.parametrize("cut", [1, 10, 0.5, -8, -1])
def test_torn_last_member_keeps_every_complete_member(tmp_path: Path, cut: float):
    file, boundary = _two_member_file(tmp_path)
    size = file.stat().st_size
    keep = boundary + int(cut * (size - boundary)) if isinstance(cut, float) else (
        boundary + cut if cut > 0 else size + cut
    )
    os.truncate(file, keep)
    read = read_archive_file(file)
    assert ids(read.messages) == ["m0", "m1", "m2", "m3"]
    assert read.problem == "torn"
    assert read.end_offset == boundary


def test_garbage_tail_is_reported_not_raised(tmp_path: Path):
    file, boundary = _two_member_file(tmp_path)
    with file.open("ab") as out:
        out.write(b"\x00garbage that is not gzip")
    read = read_archive_file(file)
    assert len(read.messages) == 8
    assert read.problem in ("corrupt", "torn")
    assert read.end_offset == file.stat().st_size - len(b"\x00garbage that is not gzip")


def test_reading_from_an_offset_gives_only_newer_members(tmp_path: Path):
    file, boundary = _two_member_file(tmp_path)
    read = read_archive_file(file, boundary)
    assert ids(read.messages) == ["m4", "m5", "m6", "m7"]
    assert read.complete and read.problem is None


def test_bad_lines_are_counted_and_skipped(tmp_path: Path):
    folder = tmp_path / "segment-logs" / "src1" / str(DAY)
    folder.mkdir(parents=True)
    file = folder / "part.gz"
    file.write_bytes(gzip.compress(b'{"messageId": "a"}\nnot json\n[1]\n\n{"messageId": "b"}\n'))
    read = read_archive_file(file)
    assert ids(read.messages) == ["a", "b"]
    assert read.bad_lines == 2


def test_find_archive_files_names_source_and_stable_key(tmp_path: Path):
    writer = ArchiveWriter(tmp_path / "downloads")
    writer.append({("aBcD12", DAY): lines(0, 1)})
    writer.close()
    (found,) = find_archive_files(tmp_path)
    assert found.source == "aBcD12"
    assert found.key.startswith(f"segment-logs/aBcD12/{DAY}/")
    lone = tmp_path / "single.gz"
    lone.write_bytes(gzip.compress(b'{"messageId": "x"}\n'))
    (alone,) = find_archive_files(lone)
    assert alone.source is None
    assert find_archive_files(tmp_path / "missing") == []


def test_summary_counts_calls_and_events_with_samples(tmp_path: Path):
    from segloop.segment.archive.files import summarize_archive

    messages = [
        {"type": "track", "event": "Order Completed", "messageId": "1"},
        {"type": "track", "event": "Order Completed", "messageId": "2"},
        {"type": "track", "event": "Product Viewed", "messageId": "3"},
        {"type": "identify", "messageId": "4"},
    ]
    writer = ArchiveWriter(tmp_path)
    writer.append({("web", DAY): [orjson.dumps(m) for m in messages]})
    writer.close()
    summary = summarize_archive(tmp_path)
    assert summary.messages == 4
    assert summary.by_call == {"track": 3, "identify": 1}
    assert summary.by_event == {"Order Completed": 2, "Product Viewed": 1}
    assert [s["messageId"] for s in summary.samples] == ["1", "4"]
