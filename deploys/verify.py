"""Verify every llmfleet endpoint of the inventory on demand and print a fleet table.

`pyinfra INV deploys/verify.py [--data verify_wait_s=60]`: runs the endpoint probe on each host
(a fact: nothing changes), writes reports/verify/<host>.json and fails hosts with a failing
endpoint (non-zero exit), printing the host and the last lines of the container log.
"""

from tasks.verify import verify_fleet_host

verify_fleet_host()
