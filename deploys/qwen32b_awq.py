"""Seed 003 (003_89bb0d57a39cb74f.txt): Qwen3-32B-AWQ, 4 GPUs, 32K, non-thinking server-wide.

`pyinfra INV deploys/qwen32b_awq.py`; recipe tasks/recipes/qwen32b_awq.yaml, host data `serve_*` overrides fields.
"""

from tasks.model import deploy_model

deploy_model("qwen32b_awq")
