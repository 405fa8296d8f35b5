"""Progress of an image pull, for ``tasks/progress.py``: ``docker pull`` wrapped so that it keeps a
state file (``/run/llmfleet/progress/image-<name>.json``) while it runs.

Docker's CLI shows no byte counts when its output is no terminal (it drops the progress bars), but it
does print each layer's state changes (``<layer>: Pulling fs layer``, ``Download complete``, ``Pull
complete``, ``Already exists``). The wrapper (python3, stdlib) counts layers from those lines: phase
``download`` until every layer known so far is fetched, then ``extract``; ``done``/``total`` are
layers (``"unit": "layers"``). It runs the real ``docker pull`` as its child (same arguments, same
credentials, same exit code; stderr passed through, stdout kept quiet as with ``-q``), and removes
the file when the pull ends. A host without python3 pulls with ``docker pull -q``, without progress.
"""

from __future__ import annotations

import shlex

from tasks.progress import PROGRESS_DIR

#: Runs on the host: ``python3 -c PULL_SCRIPT STATE_FILE WORK -- docker pull ...``
PULL_SCRIPT = r'''
import json, os, re, subprocess, sys, time
path, work, cmd = sys.argv[1], sys.argv[2], sys.argv[4:]
layers, fetched = set(), set()
def write(phase):
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump({"kind": "progress", "work": work, "phase": phase, "done": len(fetched),
                       "total": len(layers), "unit": "layers", "pid": os.getpid(), "at": round(time.time(), 1)}, fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        pass
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, errors="replace")
try:
    write("download")
    for line in proc.stdout:
        m = re.match(r"([0-9a-f]{12}): (.+)$", line.strip())
        if m:
            layers.add(m.group(1))
            status = m.group(2)
            if status in ("Download complete", "Pull complete", "Already exists") or status.startswith("Extracting"):
                fetched.add(m.group(1))
            write("download" if len(fetched) < len(layers) else "extract")
    rc = proc.wait()
finally:
    try:
        os.unlink(path)
    except OSError:
        pass
sys.exit(rc)
'''


def pull_command(source: str, work: str) -> str:
    """``docker pull source`` that keeps a progress state file when the host has python3 (see above).

    + source: the reference to pull (the image, or its mirror copy)
    + work: what the progress line names (``image vllm/vllm-openai:v0.18.0``)
    """
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in source)
    state = f"{PROGRESS_DIR}/image-{name}.json"
    src = shlex.quote(source)
    return (f"if command -v python3 >/dev/null 2>&1; then python3 -c {shlex.quote(PULL_SCRIPT)} "
            f"{shlex.quote(state)} {shlex.quote(work)} -- docker pull {src}; else docker pull -q {src}; fi")


__all__ = ["PULL_SCRIPT", "pull_command"]
