"""``python -m streamer`` is ``pixelfleet streamer``."""

import sys

from streamer.synthetic import main

sys.exit(main())
