"""The lab's bring-up without root: recipe files that do not parse, the checkpoint size the lab's
inventory hands to preflight, and no state file left when bring-up fails half-way."""

from __future__ import annotations

import contextlib
import runpy

import pytest

from tasks.lab import hubseed, inventory
from tasks.lab import lab as lablib
from tasks.lab.config import LabConfig


def test_a_broken_recipe_is_skipped_with_its_file_and_line(tmp_path):
    (tmp_path / "good.yaml").write_text("model:\n  repo_id: Qwen/Qwen3-0.6B\n  revision: v1\n")
    (tmp_path / "broken.yaml").write_text("model:\n  repo_id: [unclosed\n  revision: v1\n")
    (tmp_path / "list.yaml").write_text("- not a mapping\n")
    said = []
    assert hubseed.recipe_sources(tmp_path, log=said.append) == {("Qwen/Qwen3-0.6B", "v1")}
    (line,) = said
    assert line.startswith(f"lab: {tmp_path}/broken.yaml:3: not a readable recipe (") and "not seeded" in line


def test_seed_returns_the_largest_checkpoint_it_published(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "a.yaml").write_text("model:\n  repo_id: Qwen/Qwen3-0.6B\n")
    size = hubseed.seed(tmp_path / "hub", shard_bytes=64 * 1024, recipes=recipes, log=lambda *_: None)
    assert 2 * 64 * 1024 < size < 2 * 64 * 1024 + 200_000  # two shards plus config and tokenizer files


def test_the_lab_inventory_carries_the_served_checkpoints_size(tmp_path):
    cfg = LabConfig("tinv")
    state = {"hosts": [{"name": "tinv-h1", "ip": "10.77.9.11", "profile": "cpu"}], "checkpoint_bytes": 585489}
    path = inventory.write(cfg, state, tmp_path / "key", tmp_path / "inv.py")
    ((name, data),) = runpy.run_path(str(path))["cpu"]
    assert name == "tinv-h1" and data["preflight_weights_bytes"] == 585489
    assert "preflight_weights_bytes" not in inventory.lab_data(cfg, {"hosts": []})  # unknown: not made up


def test_a_failed_bring_up_leaves_no_state_file(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.lab.config.RUN_DIR", tmp_path)
    monkeypatch.setattr("tasks.lab.config.CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr("tasks.lab.lab.cache_lock", contextlib.nullcontext)
    cfg = LabConfig("tfail")
    downs = []

    def half_way(cfg, *_):
        lablib.save_state(cfg, {"name": cfg.name, "hosts": [], "services": {}})  # as _up does first
        raise RuntimeError("tasks/recipes/x.yaml: broken")

    def down(cfg, log=print):
        downs.append(cfg.name)
        cfg.state_file.unlink()

    monkeypatch.setattr(lablib, "_up", half_way)
    monkeypatch.setattr(lablib, "down", down)
    with pytest.raises(RuntimeError, match="broken"):
        lablib.up(cfg, 1, log=lambda *_: None)
    assert downs == ["tfail"] and lablib.load_state(cfg) is None
