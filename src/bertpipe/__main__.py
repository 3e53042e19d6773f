"""`python -m bertpipe`: the same CLI as the `bertpipe` console script (the rules use this form, see Snakefile)."""

import sys

from bertpipe.cli import main

sys.exit(main())
