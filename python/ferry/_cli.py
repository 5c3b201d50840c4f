"""The `ferry` command that `pip install` puts on PATH: runs the ferry binary installed inside
the package (ferry/bin/ferry)."""
import os
import sys
from pathlib import Path


def main() -> None:
    binary = Path(__file__).resolve().parent / "bin" / "ferry"
    if not binary.exists():
        sys.exit(f"ferry: the ferry binary is missing from {binary.parent}; reinstall with "
                 "`pip install --no-build-isolation .` from the repository")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    os.execv(str(binary), ["ferry", *sys.argv[1:]])


if __name__ == "__main__":
    main()
