import sys

from aigc.cli import main

sys.exit(main())
