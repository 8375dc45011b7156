"""``python -m advit``: the command line (``advit.cli``)."""
import sys

from .cli import main

sys.exit(main())
