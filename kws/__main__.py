"""``python -m kws``: the command line (:mod:`kws.cli`)."""

import sys

from kws.cli import main

sys.exit(main())
