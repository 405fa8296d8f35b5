"""Qwen3-235B-A22B in BF16 on two 8x H100 80GB hosts: one replica across both (tp 8 x pp 2).

`pyinfra INV deploys/qwen235b_bf16.py`; recipe tasks/recipes/qwen235b_bf16.yaml. The inventory gives the
two hosts host data `replica: <name>` and `replica_rank: 0` (head) / `1` (worker), see inventories/prod.py.
The API key comes from the secret file `secrets/qwen235b_api_key`.
"""

from tasks.model import deploy_model

deploy_model("qwen235b_bf16")
