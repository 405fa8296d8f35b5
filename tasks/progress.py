"""Progress of long work, shown where the operator is looking.

A long step on a host keeps a small JSON state file under ``/run/llmfleet/progress/`` while it
works (tmpfs, so a reboot takes it with the work it described): the weights fetch
(``tasks/weights/fetch_progress.py`` says the fields: bytes, rate, ETA), image pulls and builds
(``tasks/progress_docker.py``: layers, steps) and a replica's start-up while its verification
waits for /health (``tasks/probe/verify_endpoint.py``: the phase read from vLLM's log, seconds of
the start-up budget). Two readers, one format:

- The pyinfra run: an operation still running on a host after ``status_progress_interval_s``
  seconds gets that host's live state files read at that interval until it ends (one read-only
  command beside the operation's, ``tasks.pyinfra_ext.watch_long_operations``), and one line per
  entry is printed under the host::

      [gpu-01] progress: weights Qwen/Qwen3-30B-A3B@main: download 12.1 GiB / 56.9 GiB (21%), 180.2 MiB/s, ETA 4m15s

  Operations shorter than the interval cost nothing; ``--dry`` runs no operation and reads nothing.
- ``deploys/status.py`` from another terminal: the same entries under the fleet table
  (``tasks/status.py``).

A state file counts only while the process that wrote it runs (``pid``): a killed fetch's file is
not shown. Entries carry no secret (work name, phase, bytes, rate).
"""

from __future__ import annotations

import json
import shlex
from typing import Any, Iterable

PROGRESS_DIR = "/run/llmfleet/progress"

#: Runs on the host (python3, stdlib): one JSON line per live state file, with its age in seconds.
READ_SCRIPT = r'''
import glob, json, os, time
for path in sorted(glob.glob(os.path.join(PROGRESS_DIR, "*.json"))):
    try:
        with open(path) as fh:
            entry = json.load(fh)
        alive = os.path.exists(f"/proc/{int(entry['pid'])}")
    except Exception:
        continue
    if alive and entry.get("kind") == "progress":
        entry["age_s"] = round(time.time() - float(entry.get("at") or 0), 1)
        print(json.dumps(entry, sort_keys=True))
'''


def read_script(progress_dir: str = PROGRESS_DIR) -> str:
    """:data:`READ_SCRIPT` reading ``progress_dir`` (python code, to embed or run with ``python3 -c``)."""
    return f"PROGRESS_DIR = {json.dumps(progress_dir)}\n{READ_SCRIPT}"


def read_command(progress_dir: str = PROGRESS_DIR) -> str:
    """The shell command that prints a host's live progress entries (nothing when there are none)."""
    script = shlex.quote(read_script(progress_dir))
    return f"[ -d {shlex.quote(progress_dir)} ] && python3 -c {script} 2>/dev/null; true"


def entries(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The progress entries among output lines (other lines are ignored)."""
    found = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("kind") == "progress":
            found.append(entry)
    return found


def size(n: float) -> str:
    """Bytes for people: ``512 B``, ``4.0 MiB``, ``56.9 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def duration(s: float) -> str:
    """Seconds for people: ``42s``, ``4m15s``, ``2h05m``."""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def describe(entry: dict[str, Any]) -> str:
    """One entry as the text after ``progress:``: work, phase, bytes / total (percent), rate, ETA."""
    done, total = int(entry.get("done") or 0), int(entry.get("total") or 0)
    text = f"{entry.get('work', '?')}: {entry.get('phase', '?')}"
    if entry.get("unit") in ("layers", "steps"):  # an image pull or build (tasks/progress_docker.py)
        return text + (f" {done} / {total} {entry['unit']} ({100 * done // total}%)" if total else "")
    if entry.get("unit") == "s":  # a replica starting (the verify probe): seconds of its start-up budget
        return text + f", {duration(done)} of a {duration(total)} start-up budget"
    if total and (done or entry.get("phase") == "download"):
        text += f" {size(done)} / {size(total)} ({100 * done // total}%)"
    elif total:
        text += f" {size(total)}"
    if entry.get("rate_bps"):
        text += f", {size(float(entry['rate_bps']))}/s"
    if entry.get("eta_s") is not None:
        text += f", ETA {duration(float(entry['eta_s']))}"
    return text


def progress_lines(stdout_lines: Iterable[str]) -> list[str]:
    """What a run prints for one read of a host: ``progress: <describe>`` per live entry."""
    return [f"progress: {describe(e)}" for e in entries(stdout_lines)]


def interval_of(host: Any) -> float:
    """``status_progress_interval_s`` of the host (0: no progress lines)."""
    from tasks.bad_input import BadInput
    from tasks.settings.status import StatusSettings

    try:
        return float(StatusSettings.value(host, "status_progress_interval_s") or 0)
    except BadInput:
        return 0.0  # refused before any host is touched; inside a running operation: no lines, no failure


def show_in_current_run() -> None:
    """Print long operations' progress in the pyinfra run this process is in (``import tasks``)."""
    from pyinfra.context import ctx_state

    from tasks.pyinfra_ext import watch_long_operations

    if ctx_state.isset():
        watch_long_operations(ctx_state.get(), interval_of, read_command(), progress_lines)


__all__ = ["PROGRESS_DIR", "describe", "entries", "progress_lines", "read_command", "read_script",
           "show_in_current_run"]
