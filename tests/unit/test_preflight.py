"""Preflight verdicts on facts gathered from the lab stand-ins (the same path a lab host takes)."""

import copy
import dataclasses
import json

import pytest

from tests.unit.conftest import run_sh

from tasks.settings.preflight import PreflightSettings
from tasks.facts.ascend import AscendNpus
from tasks.facts.nvidia import NvidiaGpus, NvidiaSmiVersion
from tasks.lab.profiles import PROFILES
from tasks.plan import GIB, PlanParams, bundled_config
from tasks.preflight import DEFAULTS, Requirement, evaluate

HOST = {
    "mem_total_bytes": 512 * GIB, "mem_available_bytes": 480 * GIB, "cpus": 56, "disk_path": "/home/llm",
    "disk": {"filesystem": "/dev/nvme0n1p2", "total_bytes": 2000 * GIB, "used_bytes": 100 * GIB,
             "free_bytes": 1900 * GIB, "mount": "/"},
    "shm": {"filesystem": "tmpfs", "total_bytes": 256 * GIB, "used_bytes": 0, "free_bytes": 256 * GIB,
            "mount": "/dev/shm"},
    "os": {"id": "ubuntu", "version_id": "24.04", "pretty_name": "Ubuntu 24.04 LTS", "codename": "noble"},
    "docker_cli": True, "docker_package": "docker-ce", "docker_version": "5:28.1.1-1~ubuntu.24.04~noble",
    "nvidia_ctk_version": "1.17.8-1",
}


SERVING = {f.name for f in dataclasses.fields(PlanParams)}


def requirement(fields: dict) -> Requirement:
    """A Requirement from flat fields: the serving ones (tp, dtype, ...) go into its PlanParams."""
    serving = PlanParams(**{k: v for k, v in fields.items() if k in SERVING})
    return Requirement(serving=serving, **{k: v for k, v in fields.items() if k not in SERVING})


def seed_001(**changes) -> Requirement:
    """Seed 001's recipe: Qwen3-30B-A3B on 4 GPUs with vLLM 0.8.5."""
    fields = dict(recipe="qwen3-30b-a3b-seed001", vllm_version="0.8.5", model_config=bundled_config("Qwen3-30B-A3B"),
                  weights_bytes=61_100_000_000, model_dir="/home/llm/model/qwen/qwen3-30b-a3b", tp=4,
                  dtype="half", max_model_len=32768, gpu_memory_utilization=0.93, block_size=32,
                  max_num_batched_tokens=4096, shm_bytes_needed=16 * GIB)
    fields.update(changes)
    return requirement(fields)


@pytest.fixture
def nvidia_facts(standin_bin):
    def gather(profile_name: str, mutate=None, fabric=None) -> dict:
        profile = copy.deepcopy(PROFILES[profile_name])
        if mutate:
            mutate(profile)
        env = standin_bin(profile)
        gpus, rc1 = run_sh(NvidiaGpus().command(), env)
        version, rc2 = run_sh(NvidiaSmiVersion().command(), env)
        assert rc1 == rc2 == 0
        return {"nvidia_gpus": NvidiaGpus().process(gpus), "nvidia_smi_version": NvidiaSmiVersion().process(version),
                "nvidia_fabric": fabric or {"nvswitch_count": 0}, "host": copy.deepcopy(HOST)}
    return gather


def test_seed_001_host_is_go_with_vllm_numbers(nvidia_facts):
    verdict = evaluate(nvidia_facts("gpu22gx4"), seed_001())
    assert verdict.go, verdict.table()
    assert verdict.plan["weights_gib_per_gpu"] == pytest.approx(14.25, abs=0.01)
    assert verdict.plan["requested_gib_per_gpu"] == pytest.approx(20.15, abs=0.01)  # 22528-348 MiB x 0.93
    # the planner's error on this log is -1.5% of KV (tests/unit/test_plan_calibration.py)
    assert verdict.plan["max_concurrency"] == pytest.approx(5.73, rel=0.02)


def test_old_driver_refusal_names_host_driver_and_image_cuda(nvidia_facts):
    verdict = evaluate(nvidia_facts("rtx4090-drv530"), seed_001(tp=8))
    assert not verdict.go
    (reason,) = [r for r in verdict.reasons if r.startswith("driver")]
    assert "530.30.02" in reason and "CUDA 12.4" in reason and "550.54.14" in reason
    assert "12.1" in reason  # what the driver can run instead


def test_driver_older_than_project_floor_even_for_old_cuda(nvidia_facts):
    verdict = evaluate(nvidia_facts("rtx4090-drv530"), seed_001(tp=8, cuda_version="12.1"))
    assert not verdict.go and any("older than 535" in r for r in verdict.reasons)


def test_new_image_on_550_driver_is_refused(nvidia_facts):
    verdict = evaluate(nvidia_facts("rtx4090x8"), seed_001(tp=8, vllm_version="0.22.0", dtype="auto"))
    assert any("needs driver >= 580.65.06" in r for r in verdict.reasons)


def test_unknown_vllm_cuda_is_a_warning(nvidia_facts):
    verdict = evaluate(nvidia_facts("rtx4090x8"), seed_001(tp=4, vllm_version="0.7.2", dtype="auto"))
    assert any("CUDA of vLLM 0.7.2 unknown" in w for w in verdict.warnings)


def test_degraded_pcie_link_warns_naming_gpu(nvidia_facts):
    verdict = evaluate(nvidia_facts("rtx4090x2"), seed_001(tp=2, vllm_version="0.10.1", dtype="auto",
                                                          quantization="awq", max_model_len=8192))
    pcie = [w for w in verdict.warnings if "PCIe" in w]
    assert len(pcie) == 1 and "GPU1 (00000000:21:00.0) link width x4, max x16" in pcie[0]
    assert verdict.go  # a warning, not a refusal


def test_idle_gen_downclock_is_explained(nvidia_facts):
    def idle(profile):
        profile["gpus"][0]["pcie_gen_current"] = 1
    verdict = evaluate(nvidia_facts("rtx4090x8", idle), seed_001(tp=4, dtype="auto"))
    assert any("GPU0" in w and "idle GPUs lower the link generation" in w for w in verdict.warnings)


def test_too_few_gpus(nvidia_facts):
    verdict = evaluate(nvidia_facts("gpu22gx4"), seed_001(tp=8))
    assert any("4 GPU(s), tp 8 x pp 1 needs 8" in r for r in verdict.reasons)


def test_bf16_on_turing(nvidia_facts):
    explicit = evaluate(nvidia_facts("gpu22gx4"), seed_001(dtype="bfloat16"))
    assert any("bfloat16 needs compute capability >= 8.0" in r for r in explicit.reasons)
    auto = evaluate(nvidia_facts("gpu22gx4"), seed_001(dtype="auto"))
    assert auto.go and any("set dtype half" in w for w in auto.warnings)


def test_fp8_by_compute_capability(nvidia_facts):
    turing = evaluate(nvidia_facts("gpu22gx4"), seed_001(quantization="fp8"))
    assert any(w.startswith("fp8 weights") for w in turing.warnings)
    ada = evaluate(nvidia_facts("rtx4090x8"), seed_001(quantization="fp8", dtype="auto", tp=2))
    assert not any("fp8" in w for w in ada.warnings)
    assert any(c.name == "fp8 weights" and c.status == "ok" for c in ada.checks)

    def volta(profile):
        for gpu in profile["gpus"]:
            gpu["compute_cap"] = "7.0"
    old = evaluate(nvidia_facts("gpu22gx4", volta), seed_001(quantization="fp8"))
    assert any("FP8 weights need compute capability >= 7.5" in r for r in old.reasons)


def test_memory_does_not_fit_says_gib_short(nvidia_facts):
    req = seed_001(model_config=bundled_config("Qwen3-235B-A22B"), tp=4, weights_bytes=470_000_000_000)
    verdict = evaluate(nvidia_facts("gpu22gx4"), req)
    (reason,) = [r for r in verdict.reasons if r.startswith("memory plan")]
    assert "GiB per GPU short" in reason


def test_busy_gpu_refused(nvidia_facts):
    def busy(profile):
        profile["gpus"][2]["memory_used_mib"] = 9000
    verdict = evaluate(nvidia_facts("gpu22gx4", busy), seed_001())
    assert any(r.startswith("GPU2 free memory") and "9000 MiB used" in r for r in verdict.reasons)


def test_nvml_mismatch_refusal_says_reboot(nvidia_facts):
    def mismatch(profile):
        profile["state"] = "nvml_mismatch"
        profile["nvml_library_version"] = "570.172"
    verdict = evaluate(nvidia_facts("rtx4090x8", mismatch), seed_001())
    (reason,) = verdict.reasons
    assert "Driver/library version mismatch" in reason and "570.172" in reason and "reboot" in reason


def test_no_gpu_and_missing_tool(nvidia_facts, standin_bin):
    def none(profile):
        profile["state"] = "no_gpu"
    assert any("No devices were found" in r for r in evaluate(nvidia_facts("rtx4090x8", none), seed_001()).reasons)
    env = standin_bin(PROFILES["cpu"], with_tools=("npu-smi",))
    lines, _ = run_sh(NvidiaGpus().command(), env)
    facts = {"nvidia_gpus": NvidiaGpus().process(lines), "host": HOST}
    assert any("nvidia-smi not found" in r for r in evaluate(facts, seed_001()).reasons)


@pytest.mark.parametrize("fabric, expect", [
    ({"nvswitch_count": 4, "fabricmanager_active": "inactive", "fabricmanager_version": "580.159.04"}, "error 802"),
    ({"nvswitch_count": 4, "fabricmanager_active": None, "fabricmanager_version": None}, "not installed"),
    ({"nvswitch_count": 4, "fabricmanager_active": "active", "fabricmanager_version": "580.95.05"},
     "nvidia-fabricmanager 580.95.05 does not match driver 580.159.04"),
])
def test_nvswitch_without_matching_fabric_manager(nvidia_facts, fabric, expect):
    req = seed_001(model_config=bundled_config("Qwen3-235B-A22B"), tp=8, dtype="auto", vllm_version="0.22.0",
                   weights_bytes=470_000_000_000, max_model_len=40960, gpu_memory_utilization=0.9)
    verdict = evaluate(nvidia_facts("h100x8", fabric=fabric), req)
    assert any(r.startswith("fabric manager") and expect in r for r in verdict.reasons), verdict.reasons


def test_h100x8_with_fabric_manager_is_go(nvidia_facts):
    fabric = {"nvswitch_count": 4, "fabricmanager_active": "active", "fabricmanager_version": "580.159.04"}
    req = seed_001(model_config=bundled_config("Qwen3-235B-A22B"), tp=8, dtype="auto", vllm_version="0.22.0",
                   weights_bytes=470_000_000_000, max_model_len=40960, gpu_memory_utilization=0.9)
    verdict = evaluate(nvidia_facts("h100x8", fabric=fabric), req)
    assert verdict.go, verdict.table()
    assert verdict.plan["kv_cache_tokens"] > 40960


def test_disk_and_shm(nvidia_facts):
    facts = nvidia_facts("gpu22gx4")
    facts["host"]["disk"]["free_bytes"] = 60 * GIB
    facts["host"]["shm"]["total_bytes"] = 64 * 1024 * 1024
    verdict = evaluate(facts, seed_001())
    disk = [r for r in verdict.reasons if r.startswith("disk")]
    assert disk and "60.0 GiB free at /home/llm" in disk[0] and "62.6 GiB needed" in disk[0]
    assert any(r.startswith("shm") and "--ipc=host" in r for r in verdict.reasons)
    present = evaluate(facts, seed_001(weights_present_bytes=61_100_000_000, shm_bytes_needed=0))
    assert not any(r.startswith("disk") for r in present.reasons)


def test_low_ram_refused_and_option_overrides(nvidia_facts):
    facts = nvidia_facts("gpu22gx4")
    facts["host"]["mem_available_bytes"] = 4 * GIB
    assert any(r.startswith("ram") for r in evaluate(facts, seed_001()).reasons)
    assert not any(r.startswith("ram") for r in evaluate(facts, seed_001(), PreflightSettings(preflight_min_ram_gib=2)).reasons)


def test_table_and_json(nvidia_facts):
    verdict = evaluate(nvidia_facts("rtx4090-drv530"), seed_001(tp=8))
    table = verdict.table()
    assert "driver" in table and "FAIL" in table and table.endswith("NO-GO (1 refusal(s))")
    data = json.loads(verdict.to_json())
    assert data["go"] is False and data["reasons"] == verdict.reasons and data["plan"]["gpus"] == 8


def test_requirement_validation_names_field():
    with pytest.raises(ValueError, match="accelerator must be one of nvidia, ascend"):
        evaluate({}, seed_001(accelerator="rocm"))
    with pytest.raises(ValueError, match="model_dir must be an absolute path"):
        evaluate({}, seed_001(model_dir="models/x"))


def test_defaults_are_prefixed():
    assert all(key.startswith("preflight_") for key in DEFAULTS)


# --- Ascend ---------------------------------------------------------------------------------------------

@pytest.fixture
def ascend_facts(standin_bin):
    def gather(mutate=None) -> dict:
        profile = copy.deepcopy(PROFILES["ascend910b"])
        if mutate:
            mutate(profile)
        lines, rc = run_sh(AscendNpus().command(), standin_bin(profile, with_tools=("npu-smi",)))
        assert rc == 0
        return {"ascend": AscendNpus().process(lines), "host": copy.deepcopy(HOST)}
    return gather


def ascend_req(**changes) -> Requirement:
    fields = dict(recipe="qwen3-32b-ascend", vllm_version="0.11.0", model_config=bundled_config("Qwen3-32B"),
                  weights_bytes=65_500_000_000, model_dir="/data/models/Qwen3-32B", tp=4, accelerator="ascend",
                  max_model_len=32768)
    fields.update(changes)
    return requirement(fields)


def test_ascend910b_go(ascend_facts):
    facts = ascend_facts()
    assert facts["ascend"]["status"] == "ok" and len(facts["ascend"]["npus"]) == 8
    verdict = evaluate(facts, ascend_req())
    assert verdict.go, verdict.table()
    assert verdict.plan["gpus"] == 4


def test_ascend_missing_driver_gives_instructions_and_never_reboots():
    facts = {"ascend": {"status": "missing", "npus": []}, "host": HOST}
    (reason,) = evaluate(facts, ascend_req()).reasons
    assert "npu-driver" in reason and "firmware" in reason and "never reboots" in reason


def test_ascend_unhealthy_and_count(ascend_facts):
    def alarm(profile):
        profile["npus"][1]["health"] = "Alarm"
        profile["npus"][2]["health"] = "Warning"
    verdict = evaluate(ascend_facts(alarm), ascend_req())
    assert any(r.startswith("NPU1 health") for r in verdict.reasons)
    assert any(w.startswith("NPU2 health") for w in verdict.warnings)
    assert any("needs 16" in r for r in evaluate(ascend_facts(), ascend_req(tp=16)).reasons)
