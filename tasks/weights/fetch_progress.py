"""Download progress of fetch.py: a thread that says, every interval, the bytes staged so far."""

from __future__ import annotations

import os
import threading
from pathlib import Path

try:
    from .fetch_output import say
except ImportError:
    from fetch_output import say  # type: ignore[no-redef]

STAGING_MARKER = ".llmfleet-staging.json"


class Progress(threading.Thread):
    """Prints a ``progress`` line every interval with the bytes present under the staging dir."""

    def __init__(self, staging: Path, total: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.staging, self.total, self.interval = staging, total, interval
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
        while not self.stopped.wait(self.interval):
            say("progress", f"bytes={self.on_disk()}", f"total={self.total}")

    def stop(self) -> None:
        self.stopped.set()
        say("progress", f"bytes={self.on_disk()}", f"total={self.total}")

