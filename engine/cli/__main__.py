"""`python -m herald.engine.cli`: the same as the `herald` command."""

import sys

from .main import main

sys.exit(main())
