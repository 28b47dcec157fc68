import sys

from pysparsek.cli.main import main

sys.exit(main())
