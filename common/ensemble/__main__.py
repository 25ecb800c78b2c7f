"""`python -m common.ensemble fit | predict`: the command line is common/ensemble/command.py."""
import sys

from common.ensemble.command import main

sys.exit(main())
