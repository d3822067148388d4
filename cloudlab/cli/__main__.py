"""``python -m cloudlab.cli`` (what ``cloudlab up`` starts its service and nodes with): the ``cloudlab`` command."""

import sys

from cloudlab.cli import main

sys.exit(main())
