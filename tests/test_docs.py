"""The documentation covers the public API: every name in ``bnns_py.__all__`` has a docstring and
a place in the API reference (docs/reference/), and every example script is in the gallery and
in CI. The docs build itself and its doctests run in .ci/docs.sh."""
import inspect
import re
from pathlib import Path

import pytest

import bnns_py

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
EXAMPLES = ROOT / "examples"
DATA_NAMES = {"ffi", "__version__"}  # objects, documented in the reference's prose


def public_objects():
    return [(name, getattr(bnns_py, name)) for name in bnns_py.__all__ if name not in DATA_NAMES]


@pytest.mark.parametrize("name, obj", public_objects(), ids=[name for name, _ in public_objects()])
def test_public_name_has_its_own_docstring(name, obj):
    doc = obj.__doc__ or ""
    if inspect.isclass(obj):
        inherited = {base.__doc__ for base in obj.__mro__[1:]}
        assert doc not in inherited, f"bnns_py.{name} only inherits its docstring"
    assert len(doc.strip()) >= 20, f"bnns_py.{name} has no docstring worth the name: {doc!r}"


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the docs/ folder is not part of this tree (sdist)")
def test_every_public_name_is_in_the_api_reference():
    text = "\n".join(page.read_text() for page in REFERENCE.glob("*.md"))
    documented = set(re.findall(r"bnns_py\.(\w+)", text))
    missing = sorted(set(bnns_py.__all__) - documented)
    assert not missing, f"not in docs/reference/*.md: {missing}"


@pytest.mark.skipif(not (ROOT / "docs" / "examples.md").is_file(), reason="no docs/ folder (sdist)")
def test_every_example_is_in_the_gallery_and_in_ci():
    gallery = (ROOT / "docs" / "examples.md").read_text()
    ci = (ROOT / ".ci" / "examples.sh").read_text()
    scripts = sorted(path.name for path in EXAMPLES.glob("*.py"))
    assert scripts, "no example scripts found"
    assert [s for s in scripts if s not in gallery] == []
    assert [s for s in scripts if s not in ci] == []
