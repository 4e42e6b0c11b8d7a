"""``python -m m2f_core.data.synthetic``: see ``m2f_core.data.synthetic.cli``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
