"""`python -m realign.cli ...` runs the command line."""

import sys

from realign.cli.main import main

sys.exit(main())
