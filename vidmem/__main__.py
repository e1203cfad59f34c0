"""`python -m vidmem …`: a launcher for the `vidmem` command, whose code lives in the top-level `cli` package.

The command drives models/ and metrics/, which the library vidmem/ must not import (imports flow
stages/cli → models → metrics → vidmem), so the library names it by string only, here, at run time.
"""

import importlib
import sys

if __name__ == "__main__":
    sys.exit(importlib.import_module("cli.main").main())
