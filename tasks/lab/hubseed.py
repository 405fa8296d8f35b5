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


def recipe_sources(recipes: Path = RECIPES, log=print) -> set[tuple[str, str]]:
    """(repo id, revision) of every recipe file. A file that does not parse is left out with a line
    saying so: the lab comes up, and the deploy that loads that recipe reports it properly."""
    sources = set()
    for path in sorted(recipes.glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text())
            model = (doc.get("model") if isinstance(doc, dict) else None) or {}
        except (OSError, yaml.YAMLError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            log(f"lab: {where}: not a readable recipe ({type(exc).__name__}); its model is not seeded")
            continue
        if isinstance(model, dict) and model.get("repo_id"):
            sources.add((str(model["repo_id"]), str(model.get("revision") or "main")))
    return sources


def seed(hub_root: Path, shard_bytes: int = 256 * 1024, recipes: Path = RECIPES, log=print) -> int:
    """Publish one stand-in checkpoint per (repo id, revision) of the recipes; return the size in
    bytes of the largest (what a lab host's disk must hold for one model: lab preflight checks it)."""
    largest = 0
    for repo_id, revision in sorted(recipe_sources(recipes, log)):
        with tempfile.TemporaryDirectory() as tmp:
            files = Path(tmp) / "repo"
            write_model_repo(files, seed=zlib.crc32(repo_id.encode()), shards=2, shard_bytes=shard_bytes)
            if "glm-5" in repo_id.lower():
                config = json.loads((files / "config.json").read_text())
                config.update(model_type="glm_moe_dsa", architectures=["GlmMoeDsaForCausalLM"])
                (files / "config.json").write_text(json.dumps(config, indent=2))
            largest = max(largest, sum(f.stat().st_size for f in files.rglob("*") if f.is_file()))
            publish(hub_root, repo_id, files, [revision])
    return largest
