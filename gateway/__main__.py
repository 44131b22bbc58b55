import sys

from gateway.cli.main import main

# guarded: worker processes are started with the "spawn" method, which imports this module
if __name__ == "__main__":
    sys.exit(main())
