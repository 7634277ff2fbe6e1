"""bnns_py.compare / assert_close / comparison_table."""
import math

import numpy as np
import pytest

import bnns_py
from bnns_py import assert_close, compare, comparison_table, reference
from bnns_py.compare import Comparison, ComparisonTable, default_atol


def test_statistics_on_a_worked_example():
    actual = np.array([1.0, 2.0, 3.5])
    expected = np.array([1.0, 2.5, 3.0])
    c = compare(actual, expected)
    assert isinstance(c, Comparison)
    assert c.shape_ok and c.size == 3
    assert c.atol == pytest.approx(3e-5)             # rtol * max|expected| = 1e-5 * 3
    assert c.max_abs_error == pytest.approx(0.5)
    assert c.max_rel_error == pytest.approx(0.2)       # max(0.5 / 2.5, 0.5 / 3.0)
    assert c.rmse == pytest.approx(math.sqrt(0.5 / 3))
    assert c.mismatches == 2
    # both differ by 0.5; element 1 has the smaller allowance (atol + rtol*2.5), so it is worst
    assert c.worst_index == (1,) and (c.worst_actual, c.worst_expected) == (2.0, 2.5)
    assert not c.ok and not c


def test_max_rel_error():
    c = compare(np.array([1.1, 2.0]), np.array([1.0, 2.0]))
    assert c.max_rel_error == pytest.approx(0.1)
    c = compare(np.array([0.0, 1e-9]), np.array([0.0, 0.0]))  # 0/0 counts 0, x/0 is inf
    assert c.max_rel_error == math.inf
    assert c.atol == pytest.approx(1e-5)  # all-zero expected: scale 1
    assert c.ok


def test_default_atol_scales_with_expected():
    rng = np.random.default_rng(3)
    expected = rng.standard_normal((4, 50))
    actual = expected + rng.standard_normal((4, 50)) * 2e-6
    small, large = compare(actual, expected), compare(actual * 1000, expected * 1000)
    assert large.atol == pytest.approx(small.atol * 1000)
    assert large.mismatches == small.mismatches
    assert default_atol(expected, 1e-5) == pytest.approx(1e-5 * np.abs(expected).max())
    assert default_atol(np.array([np.inf, -2.0, np.nan]), 1e-3) == pytest.approx(2e-3)  # finite values only


def test_explicit_atol_and_rtol():
    actual, expected = np.array([1.0 + 2e-5, 100.0 + 5e-4]), np.array([1.0, 100.0])
    assert compare(actual, expected, atol=0).mismatches == 1        # purely relative: 2e-5 > 1e-5 * 1
    assert compare(actual, expected, rtol=0, atol=1e-3).ok
    assert not compare(actual, expected, rtol=0, atol=1e-4).ok
    assert compare(actual, expected, rtol=1e-4, atol=0).ok
    assert compare(actual, expected, atol=0).atol_given and not compare(actual, expected).atol_given
    for bad in (-1, float("nan"), "1e-5", True):
        with pytest.raises(ValueError, match="rtol"):
            compare(actual, expected, rtol=bad)
    with pytest.raises(ValueError, match="atol"):
        compare(actual, expected, atol=-0.1)


def test_float32_convolution_against_float64_reference():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    w = (rng.standard_normal((16, 8, 3, 3)) / 8).astype(np.float32)
    actual = bnns_py.conv2d(x, w, padding=1)
    expected = reference.conv2d(x, w, padding=1)
    c = assert_close(actual, expected)           # returns the comparison when it passes
    assert c.ok and c.actual_dtype == "float32" and c.expected_dtype == "float64"
    assert 0 < c.max_abs_error < 1e-5 and c.rmse < c.max_abs_error
    corrupted = actual.copy()
    corrupted[1, 7, 3, 4] += 0.01
    c = compare(corrupted, expected)
    assert c.mismatches == 1 and c.worst_index == (1, 7, 3, 4)
    assert c.max_abs_error == pytest.approx(0.01, rel=1e-3)


def test_assert_close_failure_message():
    with pytest.raises(AssertionError) as info:
        assert_close(np.array([1.0, 2.0, 3.5]), np.array([1.0, 2.5, 3.0]), msg="layer 3 output")
    text = str(info.value)
    assert text.startswith("layer 3 output\nComparison: FAIL")
    for fact in ("max abs error  0.5", "max rel error  0.2", "mismatches     2 of 3", "rtol=1e-05, atol=3e-05",
                 "atol=3e-05 = rtol * max|expected|", "worst element  [1]: actual 2, expected 2.5, |diff| 0.5",
                 "(3,), 3 values (float64 vs float64)"):
        assert fact in text, (fact, text)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_close(np.zeros((2, 3)), np.zeros((3, 2)))


def test_shape_mismatch_is_not_broadcast():
    c = compare(np.zeros((1, 4)), np.zeros(4))
    assert not c.ok and not c.shape_ok
    assert "actual (1, 4) (float64), expected (4,) (float64)" in repr(c)
    assert "shapes differ" in c._repr_html_()


def test_nan_and_inf():
    nan, inf = float("nan"), float("inf")
    assert compare(np.array([nan, inf, -inf, 1.0]), np.array([nan, inf, -inf, 1.0])).ok
    c = compare(np.array([nan, 1.0]), np.array([1.0, 1.0]))
    assert not c.ok and c.mismatches == 1 and c.max_abs_error == inf and c.worst_index == (0,)
    c = compare(np.array([inf, 2.0]), np.array([-inf, 2.0]))
    assert c.mismatches == 1 and c.worst_index == (0,)
    assert math.isfinite(compare(np.array([1.0, 2.0]), np.array([1.0, inf])).rmse) is True


def test_empty_and_scalars_and_lists():
    c = compare(np.zeros((0, 3)), np.zeros((0, 3)))
    assert c.ok and c.size == 0 and c.worst_index is None and "worst element  -" in repr(c)
    assert compare(3.0, 3.0).ok and compare([1, 2], [1, 2]).ok
    exact = compare(np.arange(4.0), np.arange(4.0))
    assert exact.worst_index is None and "worst element  - (all equal)" in repr(exact)
    assert compare(np.array([True, False]), np.array([1.0, 0.0])).ok
    with pytest.raises(TypeError, match="real numbers"):
        compare(np.array([1j]), np.array([1.0]))


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    t = torch.linspace(-1, 1, 12, requires_grad=True).reshape(3, 4) * 2  # non-leaf, needs detach
    c = compare(t, t.detach().numpy().astype(np.float64))
    assert c.ok and c.actual_dtype == "float32" and c.actual_shape == (3, 4)
    c = compare(t.to(torch.bfloat16), t)
    assert c.actual_dtype == "float32" and not c.ok  # bfloat16 keeps ~3 digits
    assert compare(t.to(torch.bfloat16), t, rtol=1e-2).ok


def test_html_is_a_table_and_escaped():
    c = compare(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    page = c._repr_html_()
    assert page.count("<table") == 1 and "Comparison: FAIL" in page
    assert "|diff| &lt;= atol + rtol*|expected|" in page and "<=" not in page
    assert "max abs error" in page and "1 of 2" in page


def test_comparison_table():
    good = compare(np.ones(4), np.ones(4))
    bad = compare(np.array([1.0, 5.0]), np.array([1.0, 2.0]))
    table = comparison_table({"forward <x>": good, "weight grad": bad})
    assert isinstance(table, ComparisonTable) and not table.ok and not table
    text = repr(table)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["result", "shape", "max"]
    assert lines[1].startswith("forward <x>") and " OK " in lines[1]
    assert lines[2].startswith("weight grad") and " FAIL " in lines[2] and "1/2" in lines[2] and "[1]" in lines[2]
    page = table._repr_html_()
    assert "forward &lt;x&gt;" in page and "forward <x>" not in page
    assert page.count("<tr") == 3 and "FAILURES" in page
    assert comparison_table([("a", good)]).ok
    with pytest.raises(TypeError, match="not a Comparison"):
        comparison_table({"a": 1.0})


def test_as_dict():
    d = compare(np.array([1.0, 2.0]), np.array([1.0, 2.5])).as_dict()
    assert d["mismatches"] == 1 and d["worst_index"] == (1,) and d["ok"] is False
