"""``python -m windtunnel ...``: the same commands as the ``windtunnel`` console script."""

import sys

from windtunnel.cli import main

sys.exit(main())
