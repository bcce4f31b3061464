"""``python -m training.aws <command>``: see :mod:`training.aws.cli`."""

import sys

from training.aws.cli import main

if __name__ == "__main__":
    sys.exit(main())
