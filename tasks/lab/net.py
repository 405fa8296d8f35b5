"""The lab's network: one bridge, one network namespace and veth pair per host, NAT out.

Outbound traffic from lab hosts is limited to DNS (to the machine's resolver) and TCP 80/443
(the package archives); everything else leaving the bridge is dropped. The lab's own services
(registry, apt repository, hub stand-in) listen on the bridge address.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .config import RUN_DIR, LabConfig

SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    # systemd in many hosts runs out of inotify instances past ~16 hosts.
    "fs.inotify.max_user_instances": "8192",
    "fs.inotify.max_user_watches": "1048576",
}
SYSCTL_SAVE = RUN_DIR / "sysctl-saved.json"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True)


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def raise_sysctls() -> None:
    """Set the lab's sysctls, saving the machine's values the first time (shared by all labs)."""
    if not SYSCTL_SAVE.exists():
        SYSCTL_SAVE.parent.mkdir(parents=True, exist_ok=True)
        saved = {key: _sysctl_path(key).read_text().strip() for key in SYSCTLS}
        SYSCTL_SAVE.write_text(json.dumps(saved))
    for key, value in SYSCTLS.items():
        current = _sysctl_path(key).read_text().strip()
        if key.startswith("fs.") and int(current) >= int(value):
            continue
        _sysctl_path(key).write_text(value)


def restore_sysctls() -> None:
    """Put back the machine's sysctls once no lab is left."""
    if not SYSCTL_SAVE.exists():
        return
    if any(p.is_dir() and (p / "state.json").exists() for p in RUN_DIR.iterdir()):
        return
    for key, value in json.loads(SYSCTL_SAVE.read_text()).items():
        _sysctl_path(key).write_text(value)
    SYSCTL_SAVE.unlink()


def _uplink() -> str:
    route = sh("ip", "-j", "route", "show", "default").stdout
    return json.loads(route)[0]["dev"]


def _resolvers() -> list[str]:
    out = []
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
            out.append(parts[1])
    return out


def bridge_up(cfg: LabConfig) -> None:
    if sh("ip", "link", "show", cfg.bridge, check=False).returncode != 0:
        sh("ip", "link", "add", cfg.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{cfg.bridge_ip}/24", "dev", cfg.bridge)
    sh("ip", "link", "set", cfg.bridge, "up")
    resolvers = ", ".join(_resolvers()) or cfg.bridge_ip
    ruleset = f"""
table inet {cfg.nft_table} {{
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{cfg.bridge}" oifname "{cfg.bridge}" accept
    oifname "{cfg.bridge}" ct state established,related accept
    oifname "{cfg.bridge}" drop
    iifname "{cfg.bridge}" ip daddr {{ {resolvers} }} meta l4proto {{ tcp, udp }} th dport 53 accept
    iifname "{cfg.bridge}" tcp dport {{ 80, 443 }} accept
    iifname "{cfg.bridge}" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr {cfg.prefix}.0/24 oifname "{_uplink()}" masquerade
  }}
}}
"""
    sh("nft", "delete", "table", "inet", cfg.nft_table, check=False)
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)


def bridge_down(cfg: LabConfig) -> None:
    sh("nft", "delete", "table", "inet", cfg.nft_table, check=False)
    sh("ip", "link", "del", cfg.bridge, check=False)


def host_net_up(cfg: LabConfig, index: int) -> None:
    ns, veth = cfg.netns(index), cfg.veth(index)
    sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", veth, check=False)
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", veth, "master", cfg.bridge, "up")
    inside = ("ip", "netns", "exec", ns)
    sh(*inside, "ip", "link", "set", "lo", "up")
    sh(*inside, "ip", "addr", "add", f"{cfg.host_ip(index)}/24", "dev", "eth0")
    sh(*inside, "ip", "link", "set", "eth0", "up")
    sh(*inside, "ip", "route", "add", "default", "via", cfg.bridge_ip)


def host_net_down(cfg: LabConfig, index: int) -> None:
    sh("ip", "netns", "del", cfg.netns(index), check=False)
    sh("ip", "link", "del", cfg.veth(index), check=False)
