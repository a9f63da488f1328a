"""``python -m vistag.cli ARGS``: the ``vistag`` command."""

import sys

from vistag.cli import main

sys.exit(main())
