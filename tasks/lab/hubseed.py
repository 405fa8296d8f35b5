"""Stand-in model repositories for every recipe, published into the lab's hub stand-in at `lab up`.

Each recipe's repository id and revision get a small generated checkpoint (real Qwen3 config and
tensor names, a few hundred KiB of shards), so any recipe deploys in the lab out of the box. GLM-5
repositories carry GLM-5's model_type, so the stand-in vLLM server asks for transformers >= 5.2 as
vLLM does. These are stand-ins: no weights here can generate text.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path

import yaml

from .standins.model_repo import publish, write_model_repo

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe_sources() -> set[tuple[str, str]]:
    sources = set()
    for path in sorted(RECIPES.glob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        if model.get("repo_id"):
            sources.add((model["repo_id"], str(model.get("revision") or "main")))
    return sources


def seed(hub_root: Path, shard_bytes: int = 256 * 1024) -> list[str]:
    """Publish one stand-in checkpoint per (repo id, revision) of the recipes; return the repo ids."""
    published = []
    for repo_id, revision in sorted(recipe_sources()):
        with tempfile.TemporaryDirectory() as tmp:
            files = Path(tmp) / "repo"
            write_model_repo(files, seed=zlib.crc32(repo_id.encode()), shards=2, shard_bytes=shard_bytes)
            if "glm-5" in repo_id.lower():
                config = json.loads((files / "config.json").read_text())
                config.update(model_type="glm_moe_dsa", architectures=["GlmMoeDsaForCausalLM"])
                (files / "config.json").write_text(json.dumps(config, indent=2))
            publish(hub_root, repo_id, files, [revision])
        published.append(repo_id)
    return published
