"""``python -m replicad`` is the ``replicad`` command."""

import sys

from .cli import main

sys.exit(main())
