"""Seed 004 (004_0a606f71b40633e1.txt): Qwen3-30B on Atlas 800T A2 (Ascend 910B) with vLLM-Ascend.

`pyinfra INV deploys/qwen3_ascend.py`; recipe tasks/recipes/qwen3_ascend.yaml, host data `serve_*` overrides fields.
"""

from tasks.model import deploy_model

deploy_model("qwen3_ascend")
