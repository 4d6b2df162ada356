"""``python -m spacrd``: the ``spacrd`` command."""

import sys

from spacrd._cli import main

sys.exit(main())
