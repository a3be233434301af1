"""``python -m serving`` is ``model-serve``."""

import sys

from serving.cli import main

sys.exit(main())
