"""`python -m hil.supervisor`: the CLI; start() detaches the supervisor as `... run --dir DIR`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
