"""``python -m workers.cli``: the ``abstractruntime`` console script without installing it."""

import sys

from . import main

sys.exit(main())
