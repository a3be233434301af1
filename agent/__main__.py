"""``python -m agent`` is ``model-agent``."""

import sys

from agent.cli import main

sys.exit(main())
