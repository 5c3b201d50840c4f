"""Runs pytest over tests/python for ctest: exit code 77 (ctest's skip) when pytest or numpy is
not installed, instead of a failure."""
import sys

try:
    import numpy  # noqa: F401
    import pytest
except ImportError as e:
    print(f"skipped: {e} (apt-get install python3-pytest python3-numpy)")
    sys.exit(77)

sys.exit(pytest.main(["-p", "no:cacheprovider", *sys.argv[1:]]))
