"""Seed 001 (001_9d5b5e33fbac6015.txt): Qwen3-30B-A3B, 4 GPUs, fp16, 32K context, port 8000.

`pyinfra INV deploys/qwen30b.py`; recipe tasks/recipes/qwen30b.yaml, host data `serve_*` overrides fields.
"""

from tasks.model import deploy_model

deploy_model("qwen30b")
