"""Sphinx configuration: Markdown pages (MyST) plus an API reference generated from docstrings.

Build with warnings as errors, as CI does: ``bash .ci/docs.sh python``.
"""
import os
import sys

# The package must be importable (installed, or the checkout on the path); importing bnns_py
# never loads a C library, so autodoc works without a built backend.
sys.path.insert(0, os.path.abspath(".."))

import bnns_py  # noqa: E402

project = "bnns-py"
author = "the bnns-py developers"
copyright = "the bnns-py developers"
release = bnns_py.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
# Types are written in the numpydoc sections; the hints (numpy.typing unions) would only add noise
autodoc_typehints = "none"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# Attributes sections as fields of their class, so that autodoc members do not describe them twice
napoleon_use_ivar = True

# numpydoc types such as "array_like, shape (N, C, H, W)" are cross-referenced word by word, and
# "shape" names attributes of several classes: such ambiguous links are left plain, not warned.
suppress_warnings = ["ref.python"]

html_theme = "alabaster"
html_title = f"bnns-py {release}"
html_theme_options = {
    "description": "Apple BNNS convolutions from numpy, on macOS and everywhere else",
    "fixed_sidebar": True,
}
