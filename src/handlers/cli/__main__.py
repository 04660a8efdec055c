"""``python -m handlers.cli``: the same as the ``sentryca`` command."""

import sys

from .main import main

sys.exit(main())
