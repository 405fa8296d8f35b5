"""Seed 002 (002_c171d88336fa6b32.txt, section 3.2): GLM-5 on 4 GPUs with a custom image that

`pyinfra INV deploys/glm5.py`; recipe tasks/recipes/glm5.yaml, host data `serve_*` overrides fields.
"""

from tasks.model import deploy_model

deploy_model("glm5")
