"""``python -m rxstreamer``: the same as the ``rxstreamer`` command, with stop signals handled from the start."""

import sys

from rxstreamer.signals import install_process_watch

install_process_watch()  # before the heavy imports: a SIGTERM during start-up is then a clean stop

from rxstreamer.cli import main  # noqa: E402 - imported after the signal handlers on purpose

sys.exit(main())
