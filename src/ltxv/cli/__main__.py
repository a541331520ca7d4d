"""`python -m ltxv.cli`: the `ltxv` command."""

import sys

from ltxv.cli import main

sys.exit(main())
