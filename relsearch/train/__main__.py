"""``python -m relsearch.train ...``: same as ``relsearch train``."""

import sys

from relsearch.train.cli import main

sys.exit(main())
