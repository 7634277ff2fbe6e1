"""One-way imports among the numpy-first modules and the layer classes (read from the source)."""
import ast
from pathlib import Path

import bnns_py

PACKAGE = Path(bnns_py.__file__).parent


def _top_level_imports(name):
    """{imported bnns_py module: [names]} of a module's top-level ``from . import`` statements."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    imports = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:
                for alias in node.names:
                    imports.setdefault(alias.name, [])
            else:
                imports.setdefault(node.module, []).extend(alias.name for alias in node.names)
    return imports


def test_numpy_first_modules_import_one_way():
    numpy_first = {"_arrays", "functional", "modules", "interop"}
    for layer_module in ("convolution", "fully_connected", "layer", "descriptor"):
        assert not numpy_first & set(_top_level_imports(layer_module)), layer_module
    assert set(_top_level_imports("_arrays")) <= {"_ffi"}
    assert not {"modules", "interop"} & set(_top_level_imports("functional"))
    assert "interop" not in _top_level_imports("modules")


def test_no_private_helpers_cross_modules():
    for name in ("modules", "interop", "fully_connected", "cli"):
        for module, names in _top_level_imports(name).items():
            if module in ("functional", "modules"):
                assert not [n for n in names if n.startswith("_")], (name, module, names)
