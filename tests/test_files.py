"""Whole files or none, and one writer per run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit_asr.files import LOCK_FILE, FolderLock, write_text_atomic


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "row.json"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "row.json"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "row.json"
    target.write_text("old")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["row.json"]


def test_a_live_owner_keeps_the_folder(tmp_path):
    with FolderLock(tmp_path, "first"):
        with pytest.raises(RuntimeError, match=rf"in use by first \(pid {os.getpid()}"):
            FolderLock(tmp_path, "second").acquire()
    assert not (tmp_path / LOCK_FILE).exists()  # released


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps(
        {"host": os.uname().nodename, "pid": dead.pid, "what": "a killed run"}))
    with FolderLock(tmp_path, "me"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "stale lock of a killed run" in caplog.text


def test_train_refuses_a_folder_a_live_run_holds(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps(
        {"host": os.uname().nodename, "pid": os.getpid(), "what": "lowbit-asr train (…)"}))
    lowbit = Path(sys.executable).parent / "lowbit-asr"
    proc = subprocess.run([str(lowbit), "train", f"hydra.run.dir={run_dir}",
                           f"dataset.root={tmp_path}", "logger=csv"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert f"is in use by lowbit-asr train (…) (pid {os.getpid()}" in proc.stderr
    assert not (run_dir / "results.json").exists()
