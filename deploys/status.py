"""Print the fleet's status table and write reports/status/<timestamp>.json; changes nothing.

`pyinfra INV deploys/status.py [--data status_report_dir=DIR]`: per host and served model the
image, vLLM version, unit state, health, last verification, weights revision and last rollout
outcome; per gateway endpoint the replicas in and drained (tasks/status.py).
"""

from tasks.status import status_host

status_host()
