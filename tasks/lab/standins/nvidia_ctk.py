#!/usr/bin/python3
"""llmfleet lab STAND-IN for the NVIDIA Container Toolkit binaries (no GPU exists in the lab).

Installed by the lab's stand-in apt packages under the real names; behaviour is chosen by
the name it is called as:

- nvidia-ctk: ``--version``, ``runtime configure --runtime=docker [--config=PATH]`` (edits
  daemon.json like the real tool), ``cdi generate --output=PATH`` (a CDI spec listing the
  stand-in GPUs from /etc/llmfleet-standin/accelerators.json), ``cdi list``;
- nvidia-container-runtime-hook: reads the OCI state on stdin, copies the accelerator profile
  into the container's root (where the real hook injects the driver) and lets it start (Docker
  refuses ``--gpus`` unless this hook exists);
- nvidia-container-runtime: hands over to runc;
- nvidia-container-cli: ``--version``, ``info``.
"""

import json
import os
import sys

VERSION = "@VERSION@"
PROFILE = os.environ.get("LLMFLEET_STANDIN_PROFILE", "/etc/llmfleet-standin/accelerators.json")


def _gpus():
    try:
        with open(PROFILE) as f:
            gpus = json.load(f).get("gpus", [])
    except (OSError, ValueError):
        return []
    return [dict(gpu, index=gpu.get("index", i)) for i, gpu in enumerate(gpus)]


def _opt(args, name, default=None):
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def ctk(args):
    if not args or args[0] in ("--version", "-v"):
        print(f"NVIDIA Container Toolkit CLI version {VERSION}\ncommit: llmfleet-lab-standin")
        return 0
    if args[:2] == ["runtime", "configure"]:
        runtime = _opt(args, "--runtime", "docker")
        if runtime != "docker":
            print(f'level=error msg="unsupported runtime {runtime!r} in the llmfleet stand-in"', file=sys.stderr)
            return 1
        path = _opt(args, "--config", "/etc/docker/daemon.json")
        try:
            with open(path) as f:
                config = json.load(f)
        except FileNotFoundError:
            config = {}
        config.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
        if "--set-as-default" in args:
            config["default-runtime"] = "nvidia"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(config, f, indent=4)
            f.write("\n")
        print(f"INFO[0000] Wrote updated config to {path}")
        print("INFO[0000] It is recommended that docker daemon be restarted.")
        return 0
    if args[:2] == ["cdi", "generate"]:
        out = _opt(args, "--output")
        lines = ["---", "cdiVersion: 0.5.0", "kind: nvidia.com/gpu", "devices:"]
        for gpu in _gpus():
            i = gpu["index"]
            lines += [f"- name: \"{i}\"", "  containerEdits:", "    deviceNodes:", f"    - path: /dev/nvidia{i}"]
        lines += ["- name: all", "  containerEdits:", "    deviceNodes:"]
        lines += [f"    - path: /dev/nvidia{g['index']}" for g in _gpus()]
        lines += ["containerEdits:", "  deviceNodes:", "  - path: /dev/nvidiactl"]
        text = "\n".join(lines) + "\n"
        if out:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "w") as f:
                f.write(text)
            print(f"INFO[0000] Generated CDI spec with version 0.5.0\nINFO[0000] Wrote CDI spec to {out}")
        else:
            sys.stdout.write(text)
        return 0
    if args[:2] == ["cdi", "list"]:
        gpus = _gpus()
        print(f"INFO[0000] Found {len(gpus) + 1} CDI devices")
        for gpu in gpus:
            print(f"nvidia.com/gpu={gpu['index']}")
        print("nvidia.com/gpu=all")
        return 0
    print(f"nvidia-ctk (llmfleet stand-in): unsupported arguments {args}", file=sys.stderr)
    return 1


def inject_profile(state_text):
    """As the real hook puts the driver's files into a --gpus container, this one puts the host's
    accelerator profile there (what the lab's GPU-reading stand-ins, e.g. dcgm-exporter, read)."""
    try:
        bundle = json.loads(state_text or "{}").get("bundle") or ""
        with open(os.path.join(bundle, "config.json")) as fh:
            root = json.load(fh)["root"]["path"]
        root = root if os.path.isabs(root) else os.path.join(bundle, root)
        os.makedirs(os.path.join(root, "etc/llmfleet-standin"), exist_ok=True)
        with open(PROFILE) as src, open(os.path.join(root, "etc/llmfleet-standin/accelerators.json"), "w") as dst:
            dst.write(src.read())
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a container without a bundle or profile starts as before


def main():
    name = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    if name == "nvidia-container-runtime-hook":
        inject_profile(sys.stdin.read())
        return 0
    if name == "nvidia-container-runtime":
        os.execvp("runc", ["runc", *args])
    if name == "nvidia-container-cli":
        if "--version" in args or "-V" in args:
            print(f"cli-version: {VERSION}\nlib-version: {VERSION}")
            return 0
        for gpu in _gpus():
            print(f"Device Index: {gpu['index']}\nModel: {gpu.get('name', '')}")
        return 0
    return ctk(args)


if __name__ == "__main__":
    sys.exit(main())
