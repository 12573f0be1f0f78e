"""``python -m aigc``: the same as the ``aigc`` command."""

import sys

from aigc.cli import main

sys.exit(main())
