"""The collector answers 200 only once the events are fsynced (README, docs/collector.md).

The real collector serves on a loopback port; `os.fsync` is wrapped to record which files
it reached and to hold the archive file's fsync until the test lets it go. While it is
held, no answer may arrive; once it returns, the answer is a 200 and the message is in
the file (and the new file's folder) that was fsynced.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import httpx
import orjson
import pytest

from segloop.segment.archive.files import read_all_messages
from segloop.segment.collector.app import serve_in_thread

KEY = "wk_fsync"
WAIT_S = 60  # only ever reached when the behaviour is broken


def test_200_waits_until_the_archive_file_and_its_folder_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    synced: list[tuple[int, int]] = []  # (device, inode) of everything fsynced, in order
    file_fsync_entered = threading.Event()
    release = threading.Event()
    answered = threading.Event()

    def watched_fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and not file_fsync_entered.is_set():
            file_fsync_entered.set()
            release.wait(WAIT_S)  # the archive file's first fsync waits for the test
        real_fsync(fd)
        synced.append((info.st_dev, info.st_ino))

    monkeypatch.setattr(os, "fsync", watched_fsync)
    data_dir = tmp_path / "collector"
    responses: list[httpx.Response] = []
    with serve_in_thread({KEY: "web"}, data_dir) as running:

        def post() -> None:
            body = {"batch": [{"type": "track", "userId": "u1", "event": "Order Completed",
                               "messageId": "m-fsync"}]}
            with httpx.Client(base_url=running.url, auth=(KEY, ""), timeout=WAIT_S) as http:
                responses.append(http.post("/v1/batch", content=orjson.dumps(body),
                                           headers={"Content-Type": "application/json"}))
            answered.set()

        sender = threading.Thread(target=post)
        sender.start()
        try:
            for _ in range(WAIT_S * 20):  # whichever comes first: the fsync or an answer
                if file_fsync_entered.wait(0.05) or answered.is_set():
                    break
            assert file_fsync_entered.is_set(), "the collector answered without fsyncing the archive file"
            assert not answered.wait(0.5), "the collector answered while the archive fsync was running"
            synced_before_answer = list(synced)
        finally:
            release.set()
            sender.join(WAIT_S)
        assert answered.is_set() and responses[0].status_code == 200

    (archive_file,) = (data_dir / "segment-logs" / "web").glob("*/*.gz")
    assert [m["messageId"] for m in read_all_messages(data_dir / "segment-logs")] == ["m-fsync"]
    file_id = (archive_file.stat().st_dev, archive_file.stat().st_ino)
    folder_id = (archive_file.parent.stat().st_dev, archive_file.parent.stat().st_ino)
    # The new file's folder entry was made durable before the answer too (a crash must not
    # lose a whole file that was acknowledged).
    assert folder_id in synced_before_answer
    assert file_id in synced
