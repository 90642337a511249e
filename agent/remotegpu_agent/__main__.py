"""``python -m remotegpu_agent``: the same as the ``remotegpu-agent`` command."""

import sys

from .cli import main

sys.exit(main())
