import sys

from p1_reader.cli import main

sys.exit(main())
