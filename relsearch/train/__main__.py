"""``python -m relsearch.train ...``: same as ``relsearch train ...``."""

import sys

from relsearch.cli import main

main(["train", *sys.argv[1:]])
