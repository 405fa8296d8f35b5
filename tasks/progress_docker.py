"""Progress of image pulls and builds, for ``tasks/progress.py``: ``docker pull`` and ``docker build``
wrapped so that each keeps a state file (``/run/llmfleet/progress/image-<name>.json``) while it runs.

Docker's CLI shows no byte counts when its output is no terminal (it drops the progress bars), but it
does print each layer's state changes while pulling (``<layer>: Pulling fs layer``, ``Download
complete``, ``Pull complete``, ``Already exists``) and each step while building (``Step 3/7 : RUN
...`` from the classic builder, ``#7 [3/7] RUN ...`` from BuildKit's plain output). The wrapper
(python3, stdlib) counts them:

- pull: layers fetched of the layers known so far (``"unit": "layers"``), phase ``download`` until
  every layer is fetched, then ``extract``;
- build: the step running of the Dockerfile's steps (``"unit": "steps"``), phase ``build``.

It runs the real ``docker`` command as its child (same arguments, same credentials, same exit code;
stderr passed through; stdout kept quiet as with ``-q``, except that a failed build prints its last
40 lines of output to stderr, where Docker puts the failing step's messages), and removes the file
when the command ends. A host without python3 runs the command plainly, without progress.
"""

from __future__ import annotations

import shlex

from tasks.progress import PROGRESS_DIR

#: Runs on the host: ``python3 -c DOCKER_SCRIPT pull|build STATE_FILE WORK -- docker ...``
DOCKER_SCRIPT = r'''
import collections, json, os, re, subprocess, sys, time
mode, path, work, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5:]
layers, fetched, step, last = set(), set(), [0, 0], collections.deque(maxlen=40)
def write(phase, done, total, unit):
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump({"kind": "progress", "work": work, "phase": phase, "done": done, "total": total,
                       "unit": unit, "pid": os.getpid(), "at": round(time.time(), 1)}, fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        pass
def pulled(line):
    m = re.match(r"([0-9a-f]{12}): (.+)$", line)
    if m:
        layers.add(m.group(1))
        status = m.group(2)
        if status in ("Download complete", "Pull complete", "Already exists") or status.startswith("Extracting"):
            fetched.add(m.group(1))
        write("download" if len(fetched) < len(layers) else "extract", len(fetched), len(layers), "layers")
def built(line):
    m = re.match(r"Step (\d+)/(\d+) :", line) or re.match(r"#\d+ \[(?:[^\]]* )?(\d+)/(\d+)\]", line)
    if m and int(m.group(1)) >= step[0]:
        step[:] = [int(m.group(1)), int(m.group(2))]
        write("build", step[0], step[1], "steps")
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if mode == "build" else None,
                        text=True, errors="replace")
try:
    write("download" if mode == "pull" else "build", 0, 0, "layers" if mode == "pull" else "steps")
    for line in proc.stdout:
        line = line.strip()
        last.append(line)
        (pulled if mode == "pull" else built)(line)
    rc = proc.wait()
finally:
    try:
        os.unlink(path)
    except OSError:
        pass
if rc and mode == "build":
    print("\n".join(last), file=sys.stderr)
sys.exit(rc)
'''


def _wrapped(mode: str, docker_args: str, work: str, state_name: str, plain: str) -> str:
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in state_name)
    state = f"{PROGRESS_DIR}/image-{name}.json"
    return (f"if command -v python3 >/dev/null 2>&1; then python3 -c {shlex.quote(DOCKER_SCRIPT)} {mode} "
            f"{shlex.quote(state)} {shlex.quote(work)} -- docker {docker_args}; else {plain}; fi")


def pull_command(source: str, work: str) -> str:
    """``docker pull source`` that keeps a progress state file when the host has python3 (see above).

    + source: the reference to pull (the image, or its mirror copy)
    + work: what the progress line names (``image vllm/vllm-openai:v0.18.0``)

    Example:

    .. code:: python

        yield pull_command("vllm/vllm-openai:v0.18.0", "image vllm/vllm-openai:v0.18.0")
    """
    src = shlex.quote(source)
    return _wrapped("pull", f"pull {src}", work, source, f"docker pull -q {src}")


def build_command(build_args: str, image: str) -> str:
    """``docker build <build_args>`` that keeps a progress state file (the step running) when the host
    has python3 (see above).

    + build_args: everything after ``docker build``, already quoted for the shell
    + image: the tag being built (named by the progress line: ``image llmfleet/glm5:0123abcd``)

    Example:

    .. code:: python

        yield build_command(f"-t {shlex.quote(tag)} {shlex.quote(context)}", tag)
    """
    return _wrapped("build", f"build {build_args}", f"image {image}", f"build-{image}", f"docker build -q {build_args}")


__all__ = ["DOCKER_SCRIPT", "build_command", "pull_command"]
