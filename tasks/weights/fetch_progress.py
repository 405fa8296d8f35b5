"""Progress of fetch.py, for two readers.

- The host's journal: a ``progress`` marker line every ``--progress-interval`` seconds.
- The control machine: a small JSON state file, ``<progress dir>/weights-<model dir name>.json``
  (``$LLMFLEET_PROGRESS_DIR``, default ``/run/llmfleet/progress``: tmpfs, gone at a reboot with the
  fetch it described), rewritten every second by an atomic rename while the fetch downloads or
  verifies, and removed when it ends. A pyinfra run prints it per host while the fetch runs, and
  ``deploys/status.py`` shows it (``tasks/progress.py`` reads it). Fields: ``kind`` ("progress"),
  ``work`` (``weights <repo>@<revision>``), ``phase`` (download, verify), ``done``/``total`` bytes,
  ``rate_bps``, ``eta_s``, ``pid``, ``at``. No secret goes in it, so it is world-readable like the
  rest of /run. Writing it is best effort: a progress file never fails a fetch.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

try:
    from .fetch_output import say
except ImportError:
    from fetch_output import say  # type: ignore[no-redef]

STAGING_MARKER = ".llmfleet-staging.json"
PROGRESS_DIR = "/run/llmfleet/progress"
#: seconds between rewrites of the state file: a small write to tmpfs and a walk of the staging
#: directory (a few hundred files at most), cheap; readers poll it at their own interval
STATE_EVERY_S = 1.0


class ProgressState:
    """The state file of one fetch (see the module docstring)."""

    def __init__(self, dest: Path, work: str) -> None:
        root = Path(os.environ.get("LLMFLEET_PROGRESS_DIR") or PROGRESS_DIR)
        self.path = root / f"weights-{dest.name}.json"
        self.work = work
        self.broken = False

    def write(self, phase: str, done: int, total: int, rate_bps: float | None = None) -> None:
        if self.broken:
            return
        eta = round((total - done) / rate_bps) if rate_bps and total > done else None
        entry = {"kind": "progress", "work": self.work, "phase": phase, "done": done, "total": total,
                 "rate_bps": round(rate_bps) if rate_bps else None, "eta_s": eta, "pid": os.getpid(),
                 "at": round(time.time(), 1)}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entry, sort_keys=True))
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except OSError:
            self.broken = True  # read-only /run, full tmpfs: the fetch goes on without it

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


class Progress(threading.Thread):
    """While the client downloads: the state file every second, a ``progress`` line every interval."""

    def __init__(self, staging: Path, total: int, interval: float, state: ProgressState | None = None) -> None:
        super().__init__(daemon=True)
        self.staging, self.total, self.interval, self.state = staging, total, interval, state
        self.stopped = threading.Event()

    def on_disk(self) -> int:
        """Bytes of downloaded and partial files (client metadata under .cache is not counted)."""
        n = 0
        for root, _dirs, files in os.walk(self.staging):
            in_cache = os.path.relpath(root, self.staging).split(os.sep)[0] == ".cache"
            for f in files:
                if f == STAGING_MARKER or (in_cache and not f.endswith(".incomplete")):
                    continue
                try:
                    n += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return n

    def run(self) -> None:
        started, first = time.monotonic(), self.on_disk()
        said = started
        tick = min(STATE_EVERY_S, self.interval)
        while not self.stopped.wait(tick):
            now, done = time.monotonic(), self.on_disk()
            if self.state is not None:
                rate = (done - first) / (now - started) if done > first else None
                self.state.write("download", done, self.total, rate)
            if now - said >= self.interval:
                said = now
                say("progress", f"bytes={done}", f"total={self.total}")

    def stop(self) -> None:
        self.stopped.set()
        say("progress", f"bytes={self.on_disk()}", f"total={self.total}")
