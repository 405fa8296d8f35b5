"""Every quantization the spec accepts is one the planner prices; checkpoint configs are read as stored."""

import copy

import pytest

from tasks.plan import PlanInputError, PlanParams, bundled_config, count_params, linear_format, plan
from tasks.spec import SpecError, load_spec
from tasks.vllm import versions as vv
from tasks.vllm.quantization import QUANTIZATIONS, weight_format

QWEN3_32B = bundled_config("Qwen3-32B")


def test_spec_and_planner_share_one_list():
    assert vv.QUANTIZATIONS is QUANTIZATIONS
    # On the newest harvested release: older parsers lack some methods (0.8.5 has no auto-round), and
    # the command line is checked against the image's own parser (tasks/vllm/harvested.py).
    newest = {"serve_image": "vllm/vllm-openai:v0.32.0"}
    for method in QUANTIZATIONS:  # every value the spec accepts ...
        assert load_spec("qwen30b", {**newest, "serve_quantization": method}).quantization == method
    with pytest.raises(SpecError, match="quantization"):  # ... and nothing else
        load_spec("qwen30b", {"serve_quantization": "hqq"})


@pytest.mark.parametrize("method", QUANTIZATIONS)
def test_every_accepted_quantization_is_modelled(method):
    dense = plan(QWEN3_32B, PlanParams(gpu_mem_gib=79.19, tp=2, max_model_len=8192, vllm_release="0.19.0"))
    quant = plan(QWEN3_32B, PlanParams(gpu_mem_gib=79.19, tp=2, max_model_len=8192, vllm_release="0.19.0",
                                       quantization=method))
    assert 0.25 < quant.bytes_per_param <= 1.07, method  # 4 to 8.5 bits per linear weight
    assert quant.weights_gib_per_gpu < dense.weights_gib_per_gpu
    assert quant.kv_cache_tokens > dense.kv_cache_tokens


def test_unknown_method_in_a_checkpoint_is_refused_naming_the_list():
    config = {**QWEN3_32B, "quantization_config": {"quant_method": "hqq", "bits": 4}}
    with pytest.raises(PlanInputError, match="'hqq' is not one llmfleet knows; allowed: awq"):
        plan(config, PlanParams(gpu_mem_gib=79.19))


COMPRESSED_FP8 = {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {
    "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}}}}
COMPRESSED_W4A16 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
    "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                                   "group_size": 128, "symmetric": True}}}}
COMPRESSED_NVFP4 = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "config_groups": {
    "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                                                   "group_size": 16}}}}


@pytest.mark.parametrize("qc, expected", [
    (COMPRESSED_FP8, 1.0),  # the case: an FP8-dynamic checkpoint was costed as 4-bit
    (COMPRESSED_W4A16, 0.5 + 2 / 128),
    (COMPRESSED_NVFP4, 0.5 + 1 / 16),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, 1.0),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, 1.0),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}, 0.5 + 2.5 / 128),
    ({"quant_method": "gptq", "bits": 8, "group_size": -1}, 1.0),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True}, 0.5 + 2.5 / 128),
    ({"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True}, 0.5 + 2 / 128),  # GLM-5 int4
    ({"quant_method": "auto_round", "bits": 4, "group_size": 64, "sym": False},
     0.5 + 2.5 / 64),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, 0.5 + 4 / 64),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_use_double_quant": True}, 0.5 + 1 / 64),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, 1.0),
])
def test_checkpoint_configs_as_stored(qc, expected):
    assert weight_format(qc).bytes_per_param == pytest.approx(expected)
    # and the planner uses it: linear layers at that size, embeddings/norms/routers at 16 bits
    config = {**QWEN3_32B, "quantization_config": copy.deepcopy(qc)}
    counts = count_params(config)
    result = plan(config, PlanParams(gpu_mem_gib=79.19, max_model_len=8192))
    expected_gib = (counts["gpu_linear"] * expected + counts["gpu_other"] * 2) / (1 << 30)
    assert result.weights_gib_per_gpu == pytest.approx(expected_gib, rel=0.005)


def test_flag_and_checkpoint_agree_on_compressed_tensors():
    config = {**QWEN3_32B, "quantization_config": COMPRESSED_FP8}
    assert linear_format(config, "compressed-tensors").bits == 8
    assert linear_format(config, None).bits == 8
