"""``python -m rxstreamer``: the same as the ``rxstreamer`` command."""

import sys

from rxstreamer.cli import main

sys.exit(main())
