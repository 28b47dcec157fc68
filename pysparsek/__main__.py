import sys

from pysparsek.cli import main

sys.exit(main())
