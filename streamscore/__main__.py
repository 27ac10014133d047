"""``python -m streamscore ...`` = the ``streamscore`` command."""

import sys

from streamscore.cli import main

sys.exit(main())
