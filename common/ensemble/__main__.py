"""`python -m common.ensemble fit | predict`: the command line is common/ensemble/command.py."""
import sys

from common.cli import ensemble_parser

# The flags (and --help) answer before torch and the students load: command.py imports them.
ensemble_parser().parse_args()
from common.ensemble.command import main  # noqa: E402

sys.exit(main())
