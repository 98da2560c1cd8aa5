"""``python -m evalsuite.cli``: the same as the ``evalsuite`` command."""
import sys

from evalsuite.cli import main

sys.exit(main())
