"""`python -m energy_worker.cli ...`: the same as the console script `energy-worker ...`."""

import sys

from energy_worker.cli import main

sys.exit(main())
