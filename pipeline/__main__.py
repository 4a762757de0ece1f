"""`python -m pipeline ...` is the same as `lstm-pipeline ...`."""

import sys

from pipeline.orchestrators.cli import main

sys.exit(main())
