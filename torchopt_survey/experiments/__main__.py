"""Entry point: ``python -m torchopt_survey.experiments``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
