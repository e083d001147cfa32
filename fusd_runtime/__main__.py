"""``python -m fusd_runtime ...`` is the ``fusd`` command."""

import sys

from .cli import main

sys.exit(main())
