"""``python -m signaling`` is ``pixelfleet signaling``."""

import sys

from pixelfleet.cli import main

sys.exit(main(["signaling", *sys.argv[1:]]))
