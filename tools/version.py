#!/usr/bin/env python3
"""Print bnns-py's version (bnns_py/_version.py) for meson's project()."""
import pathlib
import re

text = (pathlib.Path(__file__).resolve().parent.parent / "bnns_py" / "_version.py").read_text()
print(re.search(r'__version__ = "([^"]+)"', text).group(1))
