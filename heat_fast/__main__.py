"""``python -m heat_fast`` runs the heat-fast command line."""
import sys

from heat_fast.cli import main

sys.exit(main())
