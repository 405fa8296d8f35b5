"""The fleet as one plan per run: ``specs.py`` validates every host's recipe and settings before any
host is touched, ``plan.py`` builds the read-only plan every host reads (models, replicas, weights
roles, gateways, rollout batches, fleet-wide settings), ``reads.py`` reads one fact of every host in
parallel for it."""

from tasks.fleet.plan import FleetPlan, fleet_plan, model_key
from tasks.fleet.specs import Recipe, recipe_key, recipe_of, validate_fleet

__all__ = ["FleetPlan", "Recipe", "fleet_plan", "model_key", "recipe_key", "recipe_of", "validate_fleet"]
