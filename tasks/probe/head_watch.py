#!/usr/bin/env python3
"""Restart this headless worker of a multi-node vLLM replica when its head went away.

vLLM's headless workers neither exit nor recover when the head dies (vLLM issue #32136): they keep
waiting on a process group whose rank 0 is gone, and the head that systemd restarts waits for
workers that never come. systemd's BindsTo/PartOf join units of one host only, so the worker
watches its head itself: once the head has answered /health (it does only when every member
joined), ``--misses`` failed polls in a row mean the head went away, and the worker's unit is
restarted (``systemctl try-restart``: a unit an operator stopped stays stopped). The watch then
waits for the head to be healthy again before it arms: a head still starting is no head lost.

Run by ``llmfleet-<name>-headwatch.service`` on every worker (tasks/service.py); stdlib only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.error
import urllib.request


def healthy(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):  # refused, reset, timed out, HTTP errors (HTTPError is an OSError)
        return False


def watch(url: str, unit: str, interval: float, misses: int, rounds: int | None = None) -> int:
    """Poll ``url``; restart ``unit`` after ``misses`` failures in a row following a success.
    ``rounds`` bounds the polls (tests); None: until stopped. Returns the restarts made."""
    armed, missed, restarts, done = False, 0, 0, 0
    while rounds is None or done < rounds:
        done += 1
        if healthy(url, timeout=interval):
            if not armed:
                print(f"head healthy at {url}: watching", flush=True)
            armed, missed = True, 0
        elif armed:
            missed += 1
            if missed >= misses:
                print(f"head gone ({missed} failed polls of {url}): restarting {unit}", flush=True)
                subprocess.run(["systemctl", "try-restart", unit], check=False, timeout=120)
                armed, missed, restarts = False, 0, restarts + 1
        time.sleep(interval)
    return restarts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", required=True, help="the head's address")
    parser.add_argument("--port", type=int, required=True, help="the head's HTTP port")
    parser.add_argument("--unit", required=True, help="this worker's unit")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    parser.add_argument("--misses", type=int, default=3, help="failed polls in a row that mean the head is gone")
    args = parser.parse_args(argv)
    watch(f"http://{args.head}:{args.port}/health", args.unit, args.interval, args.misses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
