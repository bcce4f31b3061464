"""``python -m binsight_aws <command>``: see :mod:`binsight_aws.cli`."""

import sys

from binsight_aws.cli import main

if __name__ == "__main__":
    sys.exit(main())
