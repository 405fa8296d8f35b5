"""Watch the fleet: Prometheus + Alertmanager on the `monitoring` group, exporters everywhere.

`pyinfra INV deploys/monitoring.py`; replicas name their recipe in host/group data `monitoring_recipe`
(tasks/monitoring/deploy.py lists every setting). Run it again after an upgrade crosses a metric rename.
"""

from tasks.monitoring.deploy import monitor

monitor()
