"""Qwen3-0.6B on a CPU server (vLLM's x86 CPU backend, no GPU).

`pyinfra INV deploys/cpu.py`; recipe tasks/recipes/cpu.yaml, host data `serve_*` overrides fields.
"""

from tasks.model import deploy_model

deploy_model("cpu")
