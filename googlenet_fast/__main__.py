"""``python -m googlenet_fast <command>``: see googlenet_fast.cli."""
import sys

from googlenet_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
