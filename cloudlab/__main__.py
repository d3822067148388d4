"""``python -m cloudlab``: the ``cloudlab`` command."""

import sys

from cloudlab.cli import main

sys.exit(main())
