"""Several models on one host: preflight refuses a recipe whose port, devices or served name another
llmfleet unit on the host already holds. The units are rendered by tasks.service (what a host really
carries) and read back through the fact's own parser."""

from __future__ import annotations

import pytest

from tasks.facts.services import MARK, LlmfleetServices
from tasks.requirement import requirement_from_spec
from tasks.service import desired
from tasks.spec import load_spec
from tests.unit.conftest import run_sh
from tests.unit.test_preflight import nvidia_facts  # noqa: F401  (fixture)


def installed(*units: tuple[str, dict]) -> dict:
    """The fact's value on a host carrying the units of these (recipe, host data) pairs."""
    lines: list[str] = []
    for recipe, data in units:
        spec = load_spec(recipe, data)
        want = desired(spec, spec.image.ref if spec.image else "x:1", "/srv/models/x", {})
        lines += [f"{MARK}{want.layout.unit}", *want.unit_text.decode().splitlines()]
    return LlmfleetServices().process(lines)


def verdict_for(nvidia_facts, recipe: str, data: dict, services: dict, profile: str = "gpu22gx4"):  # noqa: F811
    from tasks.preflight import evaluate

    facts = nvidia_facts(profile)
    facts["services"] = services
    spec = load_spec(recipe, {"preflight_weights_bytes": 1_000_000, **data})
    return evaluate(facts, requirement_from_spec(spec, "/srv/models/x", {"preflight_weights_bytes": 1_000_000}))


def test_fact_reads_port_devices_and_name_from_rendered_units():
    got = installed(("qwen30b", {"serve_devices": [0, 1, 2, 3]}), ("qwen3_ascend", {"serve_port": 8100}))
    assert got["qwen30b"] == {"recipe": "qwen30b", "ports": [8000], "devices": [0, 1, 2, 3],
                              "served_model_name": "coder"}
    assert got["qwen3_ascend"]["ports"] == [8100] and got["qwen3_ascend"]["devices"] == [0, 1, 2, 3]
    assert installed(("qwen30b", {}))["qwen30b"]["devices"] == "all"


def test_fact_command_lists_unit_files(tmp_path):
    (tmp_path / "llmfleet-a.service").write_text("ExecStart=/usr/bin/docker run -p 9000:9000 img\n")
    (tmp_path / "other.service").write_text("ExecStart=/bin/true\n")
    command = LlmfleetServices().command().replace("/etc/systemd/system", str(tmp_path))
    out, rc = run_sh(command, {})
    assert rc == 0
    assert LlmfleetServices().process(out) == {"a": {"recipe": "a", "ports": [9000], "devices": None,
                                                    "served_model_name": None}}
    out, rc = run_sh(LlmfleetServices().command().replace("/etc/systemd/system", str(tmp_path / "none")), {})
    assert rc == 0 and LlmfleetServices().process(out) == {}


@pytest.mark.parametrize("data, clash", [
    ({"serve_port": 8000, "serve_devices": [0, 1, 2, 3]}, "port 8000 is held by recipe qwen30b"),
    ({"serve_port": 8001, "serve_devices": [2, 3, 0, 1]}, "devices [0, 1, 2, 3] are held by recipe qwen30b"),
    ({"serve_port": 8001}, "qwen30b_yarn wants every device, recipe qwen30b"),
])
def test_second_model_clashing_is_refused_naming_both(nvidia_facts, data, clash):  # noqa: F811
    services = installed(("qwen30b", {"serve_devices": [0, 1, 2, 3]}))
    verdict = verdict_for(nvidia_facts, "qwen30b_yarn", data, services)
    assert not verdict.go
    reason = next(r for r in verdict.reasons if "cannot share this host" in r)
    assert clash in reason and "llmfleet-qwen30b.service" in reason and reason.count("qwen30b_yarn") >= 1


def test_same_served_name_on_another_port_and_devices_is_refused(nvidia_facts):  # noqa: F811
    services = installed(("qwen30b", {"serve_devices": [0, 1], "serve_tensor_parallel_size": 2}))
    verdict = verdict_for(nvidia_facts, "qwen30b_yarn", {"serve_port": 8001, "serve_devices": [2, 3],
                                                         "serve_tensor_parallel_size": 2}, services)
    assert not verdict.go and any("served model name 'coder'" in r for r in verdict.reasons)


def test_disjoint_model_and_its_own_unit_are_accepted(nvidia_facts):  # noqa: F811
    services = installed(("qwen30b", {"serve_devices": [0, 1], "serve_tensor_parallel_size": 2}),
                         ("qwen30b_yarn", {}))  # this recipe's own unit: the one being updated
    verdict = verdict_for(nvidia_facts, "qwen30b_yarn",
                          {"serve_port": 8001, "serve_devices": [2, 3], "serve_tensor_parallel_size": 2,
                           "serve_served_model_name": "coder-long"}, services, profile="h100x8")
    assert verdict.go, verdict.reasons
    row = next(c for c in verdict.checks if c.name == "other models")
    assert row.status == "ok" and row.detail == "qwen30b"
