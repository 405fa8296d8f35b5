"""The revision layout of a model directory: ``<dest>/current`` -> ``revisions/<rev>``, switched by
renaming a fresh symlink over it (atomic), revision directories swapped with ``renameat2`` when a
revision is replaced, old revisions pruned (never the current one)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

try:  # imported as tasks.weights.*
    from . import manifest as mf
except ImportError:  # run as a script from the uploaded directory
    import manifest as mf  # type: ignore[no-redef]


def current_target(dest: Path) -> str | None:
    """The link text of ``<dest>/current`` (e.g. ``revisions/main``), or None."""
    try:
        return os.readlink(dest / "current")
    except OSError:
        return None


def switch_current(dest: Path, revdir: str) -> None:
    """Point ``<dest>/current`` at ``revisions/<revdir>`` by renaming a fresh temp symlink over it."""
    tmp = dest / f".current.tmp-{os.getpid()}"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(f"revisions/{revdir}", tmp)
    os.replace(tmp, dest / "current")
    fsync_dir(dest)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def prune(dest: Path, keep: int) -> list[str]:
    """Remove all but the ``keep`` newest revision dirs (never the current one); return removed names."""
    revisions = dest / "revisions"
    if not revisions.is_dir():
        return []
    cur = (current_target(dest) or "").removeprefix("revisions/")

    def stamp(d: Path) -> str:
        try:
            return mf.read(d)["verified_at"]
        except mf.ManifestError:
            return ""

    dirs = sorted((d for d in revisions.iterdir() if d.is_dir()), key=stamp, reverse=True)
    kept = [d for d in dirs if d.name == cur]
    removed = []
    for d in dirs:
        if d.name == cur:
            continue
        if len(kept) < keep:
            kept.append(d)
        else:
            shutil.rmtree(d)
            removed.append(d.name)
    return removed

