"""Preflight run on a real H100 (driver 580) with pyinfra's @local connector; its reports are fixtures.

Captured with `pyinfra @local deploys/preflight.py --data preflight_recipe=R --data serve_tensor_parallel_size=N`
on the device machine (tests/fixtures/real/preflight-h100/*.console.txt are the consoles). The facts must
describe that machine, and today's code must reach the same verdict from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.preflight import evaluate
from tasks.requirement import requirement_from_spec
from tasks.spec import load_spec

REPORTS = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "preflight-h100"
CASES = {"qwen30b_fp8-tp1": ("qwen30b_fp8", 1, True), "qwen30b_fp8-tp2": ("qwen30b_fp8", 2, False),
         "qwen32b_awq-tp1": ("qwen32b_awq", 1, True)}


def _report(name: str) -> dict:
    return json.loads((REPORTS / f"{name}.json").read_text())


def test_facts_describe_the_real_h100():
    facts = _report("qwen30b_fp8-tp1")["facts"]
    gpus = facts["nvidia_gpus"]
    assert gpus["status"] == "ok" and len(gpus["gpus"]) == 1
    gpu = gpus["gpus"][0]
    assert (gpu["name"], gpu["memory_total_mib"], gpu["driver_version"], gpu["compute_cap"]) == (
        "NVIDIA H100 80GB HBM3", 81559, "580.159.04", "9.0")
    assert (gpu["pcie_gen_current"], gpu["pcie_width_current"]) == (5, 16)
    assert facts["nvidia_fabric"]["nvswitch_count"] == 0
    assert facts["host"]["os"]["id"] == "ubuntu"


@pytest.mark.parametrize("name", sorted(CASES))
def test_todays_code_reaches_the_recorded_verdict(name):
    recipe, tp, go = CASES[name]
    report = _report(name)
    assert report["verdict"]["go"] is go
    spec = load_spec(recipe, {"serve_tensor_parallel_size": tp})
    verdict = evaluate(report["facts"], requirement_from_spec(spec, report["facts"]["host"]["disk_path"] + "/x"))
    assert verdict.go is go
    assert sorted(verdict.reasons) == sorted(report["verdict"]["reasons"])
    if not go:
        assert any("1 GPU(s), tp 2 x pp 1 needs 2" in r for r in verdict.reasons)
    else:
        # FP8 on Hopper is native: no warning about it.
        assert not any("fp8" in w.lower() and "slower" in w.lower() for w in verdict.warnings)
