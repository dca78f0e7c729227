"""`python -m energy_worker.cli ...`: the same as the console script `energy-worker ...`."""

import sys

from . import main

sys.exit(main())
