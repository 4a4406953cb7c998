"""`python -m common.nameko_cli run|shell ...`: nameko's own CLI, with eventlet's
deprecation notice filtered (importing `common` does that) and nothing else changed."""
import sys

import common  # noqa: F401
from nameko.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
