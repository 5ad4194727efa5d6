"""`python -m helpers.course ...`: see `helpers.course.cli`."""
import sys

from helpers.course.cli import main

sys.exit(main())
