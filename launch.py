#!/usr/bin/env python
"""Start the Mask2Former workbench from a checkout: ``python launch.py --help`` (installed: ``m2f-app``).

The program is ``app.launcher``; this file only runs it, so that the two commands of the README work
without installing the project.
"""

import sys

from app.launcher import main

if __name__ == "__main__":
    sys.exit(main())
