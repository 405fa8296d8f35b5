"""Weights only: `pyinfra INV deploys/weights.py --data recipe=qwen30b` (model fields can be
overridden per inventory: serve_model__revision, serve_model__hub, serve_model__repo_id)."""

from pyinfra import host

from tasks.spec import load_spec
from tasks.weights.deploy import fetch_weights

fetch_weights(load_spec(host.data.get("recipe", "qwen30b"), host.data.dict()))
