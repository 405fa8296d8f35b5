"""Image build, bundles and the fleet benchmark in a lab of our own ('ib', 2 hosts).

h1 builds the GLM-5 image through the lab's PyPI stand-in (a real ``pip install`` inside a real
``docker build``), a second run changes nothing, a new transformers pin gives a new tag and a
build; a bundle saved on h1 is loaded on h2 (no pull, no build); the bench deploy measures a
stand-in container on h1 and prints the fleet table.
"""

from __future__ import annotations

import json

import pytest

from tasks.image_build import build_plan
from tasks.lab.config import LabConfig
from tasks.spec import load_spec

from .helpers import lab_name, pyinfra, ssh, own_lab

IMAGE_DEPLOY = "deploys/image.py"


@pytest.fixture(scope="module")
def ib():
    with own_lab("ib", ["cpu"] * 2) as state:
        yield state


def _ip(state, index: int) -> str:
    return state["hosts"][index - 1]["ip"]


def _tag(state, **overrides) -> str:
    data = {"image_pip_index_url": f"http://{LabConfig(lab_name('ib')).bridge_ip}:8081/simple/", **overrides}
    return build_plan(load_spec("glm5", data), data["image_pip_index_url"]).image


def test_build_once_then_never_again_then_on_a_new_pin(ib):
    inv = ib["inventory"]
    tag = _tag(ib)
    first = pyinfra(inv, IMAGE_DEPLOY, "--limit", "ib-h1", data={"image_recipe": "glm5"})
    assert first.changed()[f"Container image | Build {tag}"] == ["ib-h1"]
    probe = ("docker run --rm --entrypoint python3 {} -c 'import importlib.metadata as m, transformers;"
             "print(m.version(\"transformers\"), transformers.LLMFLEET_STANDIN)'")
    assert ssh(_ip(ib, 1), probe.format(tag)).stdout.split() == ["5.4.0", "True"]

    second = pyinfra(inv, IMAGE_DEPLOY, "--limit", "ib-h1", data={"image_recipe": "glm5"})
    assert second.operations and second.changed() == {}

    newer = _tag(ib, serve_build__transformers_version="5.2.0")
    assert newer != tag
    third = pyinfra(inv, IMAGE_DEPLOY, "--limit", "ib-h1",
                    data={"image_recipe": "glm5", "serve_build__transformers_version": "5.2.0"})
    assert third.changed() == {f"Container image | Build {newer}": ["ib-h1"]}
    assert ssh(_ip(ib, 1), probe.format(newer)).stdout.split() == ["5.2.0", "True"]

    too_old = pyinfra(inv, IMAGE_DEPLOY, "--limit", "ib-h1", check=False,
                      data={"image_recipe": "glm5", "serve_build__transformers_version": "4.57.1"})
    assert too_old.returncode != 0 and "build.transformers_version" in too_old.stdout + too_old.stderr


def test_bundle_from_h1_loads_on_h2_without_pull_or_build(ib, tmp_path):
    inv, tag = ib["inventory"], _tag(ib)
    made = pyinfra(inv, "deploys/bundle.py", "--limit", "ib-h1",
                   data={"bundle_recipe": "glm5", "bundle_local_dir": str(tmp_path)})
    assert made.changed()[f"Image bundle | Save {tag}"] == ["ib-h1"]
    tars = list(tmp_path.glob("*.tar"))
    assert [t.name for t in tars] == [tag.replace("/", "_").replace(":", "-") + ".tar"]
    again = pyinfra(inv, "deploys/bundle.py", "--limit", "ib-h1",
                    data={"bundle_recipe": "glm5", "bundle_local_dir": str(tmp_path)})
    assert again.changed() == {}

    loaded = pyinfra(inv, IMAGE_DEPLOY, "--limit", "ib-h2",
                     data={"image_recipe": "glm5", "image_bundle": str(tars[0])})
    ops = loaded.changed()
    assert ops[f"Container image | Load {tag} from bundle"] == ["ib-h2"]
    assert not [name for name in ops if "Build" in name or "Pull" in name]
    image_id = "docker image inspect -f '{{.Id}}' " + tag
    assert ssh(_ip(ib, 2), image_id).stdout == ssh(_ip(ib, 1), image_id).stdout
    # The base image never reached h2: nothing was pulled from the registry.
    assert ssh(_ip(ib, 2), "docker image inspect vllm/vllm-openai:v0.18.0", check=False).returncode != 0
    assert pyinfra(inv, IMAGE_DEPLOY, "--limit", "ib-h2",
                   data={"image_recipe": "glm5", "image_bundle": str(tars[0])}).changed() == {}


MODEL = r"""mkdir -p /srv/glm5 && python3 - <<'EOF'
import json, struct
hdr = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
open("/srv/glm5/model.safetensors", "wb").write(struct.pack("<Q", len(hdr)) + hdr + bytes(8))
json.dump({"model_type": "glm_moe_dsa", "max_position_embeddings": 8192}, open("/srv/glm5/config.json", "w"))
EOF
umask 077 && printf 'VLLM_API_KEY=lab-only-key\n' > /root/llmfleet-glm5.env
docker rm -f llmfleet-glm5 >/dev/null 2>&1; docker run -d --name llmfleet-glm5 --env-file /root/llmfleet-glm5.env \
  -v /srv/glm5:/model:ro {tag} --model /model --served-model-name glm5 --port 8000 >/dev/null
for i in $(seq 50); do docker exec llmfleet-glm5 python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:8000/health", timeout=1)' 2>/dev/null && exit 0; sleep 0.2; done; docker logs llmfleet-glm5; exit 1
"""


def test_bench_prints_fleet_table(ib, tmp_path):
    tag = _tag(ib)
    ssh(_ip(ib, 1), MODEL.replace("{tag}", tag))
    run = pyinfra(ib["inventory"], "deploys/bench.py",
                  data={"bench_local_dir": str(tmp_path), "bench_num_prompts": 16, "bench_output_len": 8})
    assert run.changed()["Benchmark | Benchmark llmfleet-glm5"] == ["ib-h1"]
    reports = list(tmp_path.glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    (ep,) = report["endpoints"]
    assert (ep["host"], ep["container"], ep["model"]) == ("ib-h1", "llmfleet-glm5", "glm5")
    assert (ep["completed"], ep["failed"], ep["num_prompts"]) == (16, 0, 16)
    assert ep["p99_ttft_ms"] >= ep["median_ttft_ms"] > 0 and ep["output_throughput"] > 0
    assert report["table"][0].split()[:2] == ["host", "model"]
    assert report["table"][2].split()[:2] == ["ib-h1", "glm5"]
    assert "ib-h1  glm5" in run.stdout + run.stderr
    # The key went through the container's environment only.
    assert "lab-only-key" not in run.stdout + run.stderr
