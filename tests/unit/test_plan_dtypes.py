"""Every dtype and KV-cache dtype the spec accepts is one the planner prices and every vLLM parser llmfleet
harvested accepts; anything else is refused before planning."""

import pytest

from tasks import plan as planner
from tasks.plan import DTYPE_BYTES, PlanInputError, PlanParams, bundled_config, plan
from tasks.spec import SpecError, load_spec
from tasks.vllm import versions as vv
from tasks.vllm.harvested import load_harvests

QWEN3_32B = bundled_config("Qwen3-32B")


def _params(**kw) -> PlanParams:
    return PlanParams(gpu_mem_gib=79.19, tp=2, max_model_len=8192, vllm_release="0.19.0", **kw)


def test_spec_and_planner_share_one_list():
    assert planner.DTYPES is vv.DTYPE_CHOICES
    assert planner.KV_CACHE_DTYPES is vv.KV_CACHE_DTYPES


@pytest.mark.parametrize("kv", vv.KV_CACHE_DTYPES)
def test_every_accepted_kv_cache_dtype_is_modelled_and_valid_in_every_harvested_release(kv):
    assert load_spec("qwen30b", {"serve_kv_cache_dtype": kv}).kv_cache_dtype == kv
    for release, harvest in load_harvests().items():
        assert kv in harvest.option("--kv-cache-dtype").choices, release
    auto = plan(QWEN3_32B, _params())
    tokens = plan(QWEN3_32B, _params(kv_cache_dtype=kv)).kv_cache_tokens
    assert tokens == auto.kv_cache_tokens if kv == "auto" else tokens > 1.9 * auto.kv_cache_tokens  # 1 byte vs 2


@pytest.mark.parametrize("dtype", vv.DTYPE_CHOICES)
def test_every_accepted_dtype_is_modelled_and_valid_in_every_harvested_release(dtype):
    assert load_spec("qwen30b", {"serve_dtype": dtype}).dtype == dtype
    for release, harvest in load_harvests().items():
        assert dtype in harvest.option("--dtype").choices, release
    assert dtype == "auto" or dtype in DTYPE_BYTES
    assert plan(QWEN3_32B, _params(dtype=dtype)).weights_gib_per_gpu > 0


@pytest.mark.parametrize("kv", ["bfloat16", "fp8_inc", "int8"])
def test_other_kv_cache_dtypes_are_refused_by_spec_and_planner(kv):
    with pytest.raises(SpecError, match="kv_cache_dtype"):
        load_spec("qwen30b", {"serve_kv_cache_dtype": kv})
    with pytest.raises(PlanInputError, match="kv_cache_dtype must be one of auto, fp8"):
        plan(QWEN3_32B, _params(kv_cache_dtype=kv))
