import sys

from pixelfleet.cli import main

sys.exit(main())
