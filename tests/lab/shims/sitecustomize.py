"""Serving lab tests only: register the weights stand-in as ``tasks.weights.deploy`` (see
llmfleet_weights_standin.py); this directory is on PYTHONPATH only while the real module is missing."""

import sys

import llmfleet_weights_standin

# Found in sys.modules first, so the real tasks.weights package (fetch.py, ...) stays untouched.
sys.modules.setdefault("tasks.weights.deploy", llmfleet_weights_standin)
