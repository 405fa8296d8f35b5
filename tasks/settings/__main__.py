"""``python -m tasks.settings [--write]``: print (or write into README.md) the settings table."""

import sys

from tasks.settings.table import main

sys.exit(main())
