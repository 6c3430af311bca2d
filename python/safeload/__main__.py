import sys

from safeload.cli import main

sys.exit(main())
