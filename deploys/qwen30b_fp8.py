"""Seed 002 (002_c171d88336fa6b32.txt, section 3.1): Qwen3-30B-A3B-Instruct-2507-FP8, 2 GPUs.

`pyinfra INV deploys/qwen30b_fp8.py`; recipe tasks/recipes/qwen30b_fp8.yaml, host data `serve_*` overrides fields.
"""

from tasks.model import deploy_model

deploy_model("qwen30b_fp8")
