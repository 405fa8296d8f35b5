"""vLLM metric names per release (tasks/vllm/metrics.py) against the stand-in's ground truth, which was
recorded separately from vLLM's loggers.py of each release (tasks/lab/standins/vllm_metrics.py)."""

from __future__ import annotations

import pytest

from tasks.lab.standins import vllm_metrics as truth
from tasks.vllm.metrics import all_names, names_for

# Releases read for the ground truth, and the lab images' versions.
RELEASES = ("0.8.5", "0.9.0.1", "0.9.1", "0.9.2", "0.10.0", "0.10.1", "0.10.1.1", "0.10.2", "0.11.0", "0.12.0",
            "0.13.0", "0.14.0", "0.15.0", "0.16.0", "0.18.0", "0.32.0")


@pytest.mark.parametrize("version", RELEASES)
def test_every_name_llmfleet_reads_is_exported_by_that_release(version):
    exported = {name for name, _ in truth.exported(version)}
    wanted = set(names_for(version).as_dict().values())
    assert wanted <= exported, sorted(wanted - exported)


@pytest.mark.parametrize("old, new, renamed_in", [
    ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", "0.9.2"),
    ("vllm:gpu_prefix_cache_hits_total", "vllm:prefix_cache_hits_total", "0.9.2"),
    ("vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds", "0.10.2"),
])
def test_new_name_read_from_the_first_release_exporting_it(old, new, renamed_in):
    before = {"0.9.2": "0.9.1", "0.10.2": "0.10.1.1"}[renamed_in]
    assert old in names_for(before).as_dict().values() and new not in names_for(before).as_dict().values()
    assert new in names_for(renamed_in).as_dict().values() and old not in names_for(renamed_in).as_dict().values()
    # The old name outlives the rename by a release or more (deprecated, then hidden): reading the new
    # one from its first release keeps a rule alive across the removal.
    assert old in {n for n, _ in truth.exported(renamed_in)}


def test_old_names_are_gone_from_releases_that_removed_them():
    exported = {n for n, _ in truth.exported("0.15.0")}
    assert "vllm:gpu_cache_usage_perc" not in exported and "vllm:time_per_output_token_seconds" not in exported
    assert set(names_for("0.15.0").as_dict().values()) <= exported


def test_all_names_holds_both_generations():
    names = all_names()
    for n in ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", "vllm:time_per_output_token_seconds",
              "vllm:inter_token_latency_seconds", "vllm:num_requests_running"):
        assert n in names


def test_standin_metrics_move_with_load():
    m = truth.Metrics("0.10.1.1", "coder")
    for _ in range(6):
        m.start()
    text = m.render()
    assert 'vllm:num_requests_running{engine="0",model_name="coder"} 4' in text
    assert 'vllm:num_requests_waiting{engine="0",model_name="coder"} 2' in text
    assert "vllm:inter_token_latency_seconds" not in text and "vllm:time_per_output_token_seconds_bucket" in text
    for _ in range(6):
        m.finish(10, 20, "stop", 0.05, 0.5)
    text = m.render()
    assert 'vllm:generation_tokens_total{engine="0",model_name="coder"} 120' in text
    assert 'vllm:time_to_first_token_seconds_count{engine="0",model_name="coder"} 6' in text
    assert 'vllm:kv_cache_usage_perc{engine="0",model_name="coder"} 0.0' in text
