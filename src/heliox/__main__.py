import sys

from heliox.cli import main

sys.exit(main())
