"""Seed 000: Qwen3-235B-A22B on 8 GPUs (tp 8, expert parallel, reasoning parser, API key, port 30000).

`pyinfra INV deploys/qwen235b.py`; the checkpoint is host data `model_variant`: "awq" (default,
tasks/recipes/qwen235b_awq.yaml) or "gptq" (tasks/recipes/qwen235b_gptq.yaml), so one fleet can
mix both. The API key comes from the secret file `secrets/qwen235b_api_key`.
"""

from tasks.model import deploy_model, variant_recipe

deploy_model(variant_recipe("qwen235b", ("awq", "gptq"), default="awq"))
