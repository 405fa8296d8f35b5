"""Seed 001 (001_9d5b5e33fbac6015.txt), long-context variant from its "扩展到更长上下文" section:

`pyinfra INV deploys/qwen30b_yarn.py`; recipe tasks/recipes/qwen30b_yarn.yaml, host data `serve_*` overrides fields.
"""

from tasks.model import deploy_model

deploy_model("qwen30b_yarn")
