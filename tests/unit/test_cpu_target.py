"""accelerator: cpu: the spec, the command line's environment, the unit, the CPU facts and preflight's checks."""

from __future__ import annotations

import json

import pytest

from tasks.cpu_target import ISA_FLAGS, CpuFlags
from tasks.plan import GIB
from tasks.preflight import DEFAULTS, evaluate
from tasks.settings.preflight import PreflightSettings
from tasks.requirement import requirement_from_spec
from tasks.service import accelerator_options
from tasks.spec import SpecError, load_spec, read_recipe
from tasks.vllm import cmdline
from tests.unit.conftest import run_sh

HOST = {"mem_total_bytes": 64 * GIB, "mem_available_bytes": 60 * GIB, "cpus": 32,
        "disk_path": "/", "disk": {"filesystem": "/dev/sda1", "total_bytes": 500 * GIB, "used_bytes": 0,
                                   "free_bytes": 400 * GIB, "mount": "/"}}
SPR = {"model": "Intel(R) Xeon(R) Platinum 8480+", "flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]}


def cpu_spec(**fields):
    """The cpu recipe with some fields replaced."""
    return load_spec({**read_recipe("cpu"), "name": "cpu", **fields})


def verdict_for(facts, **data):
    req = requirement_from_spec(cpu_spec(), "/srv/models/cpu", {"preflight_weights_bytes": 2 * GIB, **data})
    return evaluate({"host": HOST, **facts}, req, PreflightSettings.of(data))


def checks(verdict) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.detail) for c in verdict.checks}


def test_recipe_renders_the_cpu_backend_environment_and_no_devices():
    spec = cpu_spec(cpu={"kvcache_space_gib": 2, "threads_bind": "0-13", "reserved_cpus": 2})
    rendered = cmdline.render(spec)
    assert rendered.env == {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-13",
                            "VLLM_CPU_NUM_OF_RESERVED_CPU": "2", "HF_HUB_OFFLINE": "1"}
    assert "--reasoning-parser" in rendered.args and "hermes" in rendered.args
    assert accelerator_options(spec) == []


@pytest.mark.parametrize("overrides, field, says", [
    ({"image": "vllm/vllm-openai:v0.32.0"}, "accelerator", "vLLM CPU image"),
    ({"accelerator": "nvidia"}, "accelerator", "nvidia a CUDA one"),
    ({"tensor_parallel_size": 2}, "accelerator", "one process on the host's cores"),
    ({"cpu": {"threads_bind": "all-cores"}}, "cpu.threads_bind", "pattern"),
    ({"cpu": {"kvcache_space_gib": 0}}, "cpu.kvcache_space_gib", "greater than or equal to 1"),
])
def test_bad_cpu_specs_are_refused_naming_the_field(overrides, field, says):
    with pytest.raises(SpecError) as err:
        cpu_spec(**overrides)
    assert field in str(err.value) and says in str(err.value)


def test_cpu_settings_on_a_gpu_recipe_are_refused():
    with pytest.raises(SpecError, match="cpu: settings of the vLLM CPU backend"):
        load_spec({**read_recipe("qwen30b"), "cpu": {"kvcache_space_gib": 2}})


def test_cpu_flags_fact_reads_this_machines_cpuinfo():
    fact = CpuFlags()
    lines, status = run_sh(fact.command())
    assert status == 0
    parsed = fact.process(lines)
    with open("/proc/cpuinfo") as fh:
        flags = set(next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split())
    assert parsed["flags"] == [f for f in ISA_FLAGS if f in flags]
    assert parsed["model"]


def test_cpu_flags_fact_on_a_host_without_cpuinfo_flags():
    assert CpuFlags().process([]) == {"model": "", "flags": []}


def test_preflight_avx512_with_amx_is_a_go():
    verdict = verdict_for({"cpu_flags": SPR})
    found = checks(verdict)
    assert verdict.go, verdict.reasons
    assert found["cpu isa"] == ("ok", "Intel(R) Xeon(R) Platinum 8480+: AVX-512 with AMX")
    assert found["cpu memory"][0] == "ok" and "KV cache 4 GiB" in found["cpu memory"][1]
    assert "memory plan" not in found  # no GPU memory plan on CPU


def test_preflight_avx2_only_warns_and_no_avx_refuses():
    avx2 = verdict_for({"cpu_flags": {"model": "AMD EPYC 7302", "flags": ["avx2"]}})
    assert avx2.go and checks(avx2)["cpu isa"][0] == "warn"
    none = verdict_for({"cpu_flags": {"model": "QEMU Virtual CPU", "flags": []}})
    assert not none.go and "neither AVX-512 nor AVX2" in checks(none)["cpu isa"][1]


def test_preflight_refuses_too_little_ram_for_weights_kv_and_server():
    small = dict(HOST, mem_available_bytes=8 * GIB)
    req = requirement_from_spec(cpu_spec(), "/srv/models/cpu", {"preflight_weights_bytes": 2 * GIB})
    verdict = evaluate({"host": small, "cpu_flags": SPR}, req)
    assert not verdict.go
    status, detail = checks(verdict)["cpu memory"]
    assert status == "fail" and "9.00 GiB needed" in detail and "lower cpu.kvcache_space_gib" in detail


def test_preflight_refuses_too_few_cores():
    verdict = evaluate({"host": dict(HOST, cpus=1), "cpu_flags": SPR},
                       requirement_from_spec(cpu_spec(), "/srv/models/cpu", {"preflight_weights_bytes": GIB}))
    assert checks(verdict)["cpu cores"] == ("fail", "1 online, 2 required (preflight_cpu_min_cores)")
    assert DEFAULTS["preflight_cpu_min_cores"] == 2


def test_cpu_report_is_json():
    verdict = verdict_for({"cpu_flags": SPR})
    assert json.loads(verdict.to_json())["go"] is True
