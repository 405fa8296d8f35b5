"""llmfleet tasks: facts, operations and @deploy functions, one capability per module."""

from tasks.progress import show_in_current_run
from tasks.pyinfra_ext import install_in_current_run

# Every deploy file imports tasks after pyinfra connected its hosts: give their SSH sockets
# TCP_NODELAY now, before the first fact (tasks/pyinfra_ext.py says why: ~50 ms -> ~3 ms a command).
install_in_current_run()
# Long operations print per-host progress lines while they run (tasks/progress.py).
show_in_current_run()
