"""Files a run writes are whole or absent, and a run folder has one writer.

* :func:`write_text_atomic`: a temporary file in the *same* folder, flushed to disk, renamed
  over the target (a rename within one filesystem is atomic; a full disk or a kill leaves the
  old file, never half a new one).
* :class:`FolderLock`: ``<folder>/.lock`` holding the owner's host and pid, taken with
  ``O_CREAT | O_EXCL``; a second process is refused while the owner lives, and a lock left by a
  dead process (same host) is taken over with a warning.

(``lowbit_asr.quant.container`` writes packed files the same way with its own few lines: the
quantizer package imports nothing from the rest.)
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """``with FolderLock(run_dir, "lowbit-asr train"):`` — one live writer per folder."""

    def __init__(self, folder: str | Path, what: str) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self._held = False

    def acquire(self) -> None:
        """Take the lock, or raise naming its live owner."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "what": self.what}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    owner = {}
                pid, host = owner.get("pid"), owner.get("host")
                if isinstance(pid, int) and host == me["host"] and not _alive(pid):
                    log.warning("%s: taking over a stale lock of %s (pid %d, no longer"
                                " running)", self.path.parent, owner.get("what"), pid)
                    self.path.unlink(missing_ok=True)
                    continue
                raise RuntimeError(
                    f"{self.path.parent} is in use by {owner.get('what', 'another process')}"
                    f" (pid {pid} on {host}): one run writes a run folder at a time. Wait for"
                    f" it, choose another folder, or remove {self.path} if that process is"
                    " gone") from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(me))
            self._held = True
            return
        raise RuntimeError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        """Give the lock back (only if this process holds it)."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
