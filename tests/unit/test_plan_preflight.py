"""Preflight speaks in the planner's measured error: short by less than the margin is a warning, and the
report shows the margin (facts gathered from the nvidia-smi stand-in, as in test_preflight.py)."""

import copy
import math

from tests.unit.conftest import run_sh
from tests.unit.test_preflight import HOST, seed_001

from tasks.facts.nvidia import NvidiaGpus, NvidiaSmiVersion
from tasks.lab.profiles import PROFILES
from tasks.plan import GIB, KV_ERROR_MARGIN_GIB, MARGIN_SOURCE, measured_error
from tasks.preflight import evaluate


def gpu22gx4_facts(standin_bin) -> dict:
    env = standin_bin(copy.deepcopy(PROFILES["gpu22gx4"]))
    gpus, rc1 = run_sh(NvidiaGpus().command(), env)
    version, rc2 = run_sh(NvidiaSmiVersion().command(), env)
    assert rc1 == rc2 == 0
    return {"nvidia_gpus": NvidiaGpus().process(gpus), "nvidia_smi_version": NvidiaSmiVersion().process(version),
            "nvidia_fabric": {"nvswitch_count": 0}, "host": copy.deepcopy(HOST)}


def memory_check(verdict):
    (check,) = [c for c in verdict.checks if c.name == "memory plan"]
    return check


def test_short_by_less_than_the_margin_warns_more_refuses(standin_bin):
    facts = gpu22gx4_facts(standin_bin)
    fits = evaluate(facts, seed_001())
    assert fits.go and memory_check(fits).status == "ok"
    assert f"+/-{KV_ERROR_MARGIN_GIB:.2f} GiB/GPU" in memory_check(fits).detail
    # ... and says where it was measured: the calibration's public logs, not a guess
    assert MARGIN_SOURCE in memory_check(fits).detail
    assert f"measured on {measured_error()['logs']} public vLLM start-up logs" in MARGIN_SOURCE
    # the 2080 Ti's compute capability 7.5 makes vLLM 0.8.5 run its V0 engine: the plan says so
    assert fits.plan["engine"] == "v0" and fits.plan["max_num_seqs"] == 256

    kv_gib, per_token, block = fits.plan["kv_cache_gib_per_gpu"], fits.plan["kv_bytes_per_token_per_gpu"], 32

    def context_short_by(gib: float) -> int:
        return math.ceil((kv_gib + gib) * GIB / per_token / block) * block

    near = evaluate(facts, seed_001(max_model_len=context_short_by(KV_ERROR_MARGIN_GIB / 2)))
    assert near.go, near.table()
    assert memory_check(near).status == "warn"
    assert "within the planner's error" in memory_check(near).detail
    assert 0 < near.plan["short_gib_per_gpu"] <= KV_ERROR_MARGIN_GIB

    far = evaluate(facts, seed_001(max_model_len=context_short_by(2 * KV_ERROR_MARGIN_GIB)))
    assert not far.go and memory_check(far).status == "fail"
    assert "GiB per GPU short" in memory_check(far).detail and "planner error" in memory_check(far).detail
