"""``python -m cluster``: see :mod:`cluster.cli`."""

import sys

from cluster.cli import main

sys.exit(main())
