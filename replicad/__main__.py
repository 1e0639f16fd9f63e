"""``python -m replicad`` is the ``replicad`` command."""

import sys

from replicad.cli import main

sys.exit(main())
