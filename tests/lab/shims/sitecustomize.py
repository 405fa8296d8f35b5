"""Serving lab tests only: register the weights stand-in as ``tasks.weights.deploy`` (see
llmfleet_weights_standin.py); this directory is on PYTHONPATH only while the real module is missing."""

import sys
import types

import llmfleet_weights_standin

_pkg = types.ModuleType("tasks.weights")
_pkg.__path__ = []
sys.modules.setdefault("tasks.weights", _pkg)
sys.modules.setdefault("tasks.weights.deploy", llmfleet_weights_standin)
