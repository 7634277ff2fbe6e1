"""Compare results numerically: ``compare``, ``assert_close`` and ``comparison_table``.

``compare(actual, expected)`` returns a ``Comparison``: shapes, max abs / rel error, rmse, the
worst element and how many elements fall outside the tolerance, printable as text and as an HTML
table in notebooks. ``assert_close`` raises ``AssertionError`` with that summary.

Arrays may be numpy arrays, anything ``np.asarray`` accepts, or PyTorch tensors (detached and
copied to the CPU; torch is never imported unless a tensor is passed, since a tensor's type
already carries its module).

**Tolerance rule.** An element passes when ``|actual - expected| <= atol + rtol * |expected|``
(numpy's ``allclose`` rule); NaN matches NaN and an infinity matches the same infinity. With
``atol=None`` (the default), ``atol = rtol * scale`` where ``scale`` is the largest finite
``|expected|`` (1 if ``expected`` is all zeros or empty). float32 results of a reduction (a
convolution, a matrix product) carry errors proportional to the magnitude of the values summed,
not to each output, so an output that cancels to near zero cannot be held to a purely relative
tolerance; scaling ``atol`` to the data's magnitude keeps the check meaningful at any scale
(``compare(a * 1000, b * 1000)`` passes or fails exactly as ``compare(a, b)``). Pass ``atol=0``
for a purely relative check.

Module note: ``bnns_py.compare`` is the function; reach this module's other names as
``from bnns_py.compare import Comparison``.
"""
import html
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._repr import grid_html

_OK_STYLE = "background-color:#e6f4ea"
_FAIL_STYLE = "background-color:#fce8e6"


def _to_numpy(value: Any, name: str) -> "npt.NDArray[Any]":
    """A numpy array from a numpy array, array-like or PyTorch tensor (without importing torch)."""
    if isinstance(value, np.ndarray):
        return value
    module = type(value).__module__ or ""
    if module.split(".")[0] == "torch" and hasattr(value, "detach"):
        tensor = value.detach()
        if getattr(tensor, "is_conj", lambda: False)():
            tensor = tensor.resolve_conj()
        tensor = tensor.cpu()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            tensor = tensor.float()  # numpy has no such dtype
        return np.asarray(tensor.numpy())
    try:
        return np.asarray(value)
    except Exception as error:  # noqa: BLE001 - report what could not be compared
        raise TypeError(f"{name} must be a numpy array, a PyTorch tensor or array-like, "
                        f"not {type(value).__name__}") from error


def _as_float64(array: "npt.NDArray[Any]", name: str) -> "npt.NDArray[np.float64]":
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {array.dtype}; compare needs real numbers")
    return array.astype(np.float64)


def default_atol(expected: npt.ArrayLike, rtol: float) -> float:
    """The ``atol`` used when none is given: ``rtol`` times the largest finite ``|expected|``.

    Parameters
    ----------
    expected : array_like
        The expected values.
    rtol : float
        The relative tolerance.

    Returns
    -------
    float
        ``rtol * max(|expected|)`` over the finite values, or ``rtol`` when that maximum is 0 or
        ``expected`` is empty.

    Examples
    --------
    >>> from bnns_py.compare import default_atol
    >>> default_atol([0.5, -40.0, float("nan")], 1e-5)
    0.0004
    """
    expected = np.asarray(expected, dtype=np.float64)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = float(finite.max()) if finite.size else 0.0
    return rtol * (scale if scale > 0 else 1.0)


class Comparison:
    """The result of ``compare(actual, expected)``: error statistics and a verdict.

    Prints as a short text block and renders as an HTML table in notebooks; ``bool(comparison)``
    is ``comparison.ok``. Build one with :func:`compare` (same parameters).

    Attributes
    ----------
    ok : bool
        The shapes are equal and no element is outside the tolerance.
    shape_ok : bool
        The shapes are equal (no broadcasting).
    actual_shape, expected_shape : tuple of int
        The two shapes.
    actual_dtype, expected_dtype : str
        The two dtypes.
    size : int
        Number of elements compared (0 when the shapes differ).
    rtol, atol : float
        The tolerance used; ``atol`` is resolved as in :func:`default_atol` when none was given.
    atol_given : bool
        Whether ``atol`` was given.
    max_abs_error : float
        Max ``|actual - expected|`` (inf where one side is NaN or the infinities differ).
    max_rel_error : float
        Max ``|actual - expected| / |expected|`` (0/0 counts as 0, x/0 as inf).
    rmse : float
        Root mean square of ``actual - expected`` over the finite differences.
    mismatches : int
        Number of elements with ``|actual - expected| > atol + rtol * |expected|``.
    worst_index : tuple of int or None
        Index of the element that uses up the most of its tolerance, the largest
        ``|actual - expected| / (atol + rtol * |expected|)``: the first to fail as the tolerance
        shrinks. None when every element matches exactly or none was compared.
    worst_actual, worst_expected : float
        The values at ``worst_index`` (NaN when there is none).

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import compare
    >>> comparison = compare(np.array([1.0, 2.0, 3.5]), np.array([1.0, 2.0, 3.0]), rtol=1e-3)
    >>> comparison.ok, comparison.mismatches, comparison.worst_index
    (False, 1, (2,))
    >>> print(comparison)  # doctest: +ELLIPSIS
    Comparison: FAIL
      shape          (3,), 3 values (float64 vs float64)
      max abs error  0.5
    ...
    """

    __slots__ = ("ok", "shape_ok", "actual_shape", "expected_shape", "actual_dtype", "expected_dtype",
                 "size", "rtol", "atol", "atol_given", "max_abs_error", "max_rel_error", "rmse",
                 "mismatches", "worst_index", "worst_actual", "worst_expected")

    ok: bool
    shape_ok: bool
    actual_shape: Tuple[int, ...]
    expected_shape: Tuple[int, ...]
    actual_dtype: str
    expected_dtype: str
    size: int
    rtol: float
    atol: float
    atol_given: bool
    max_abs_error: float
    max_rel_error: float
    rmse: float
    mismatches: int
    worst_index: Optional[Tuple[int, ...]]
    worst_actual: float
    worst_expected: float

    def __init__(self, actual: Any, expected: Any, rtol: float = 1e-5, atol: Optional[float] = None) -> None:
        actual = _to_numpy(actual, "actual")
        expected = _to_numpy(expected, "expected")
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.floating, np.integer)) or not rtol >= 0:
            raise ValueError(f"rtol must be a number >= 0, got {rtol!r}")
        if atol is not None and (isinstance(atol, bool) or not isinstance(atol, (int, float, np.floating, np.integer))
                                 or not atol >= 0):
            raise ValueError(f"atol must be None or a number >= 0, got {atol!r}")
        self.actual_shape = tuple(actual.shape)
        self.expected_shape = tuple(expected.shape)
        self.actual_dtype = str(actual.dtype)
        self.expected_dtype = str(expected.dtype)
        a = _as_float64(actual, "actual")
        e = _as_float64(expected, "expected")
        self.rtol = float(rtol)
        self.atol_given = atol is not None
        self.atol = float(atol) if atol is not None else default_atol(e, self.rtol)
        self.shape_ok = self.actual_shape == self.expected_shape
        nan = float("nan")
        self.worst_index = None
        self.worst_actual = self.worst_expected = nan
        if not self.shape_ok:
            self.size = 0
            self.max_abs_error = self.max_rel_error = self.rmse = nan
            self.mismatches = max(a.size, e.size)
            self.ok = False
            return
        self.size = int(a.size)
        if a.size == 0:
            self.max_abs_error = self.max_rel_error = self.rmse = 0.0
            self.mismatches = 0
            self.ok = True
            return
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            same = (a == e) | (np.isnan(a) & np.isnan(e))   # also equal infinities
            diff = np.where(same, 0.0, np.abs(a - e))
            diff = np.where(np.isnan(diff), np.inf, diff)    # NaN on one side only
            magnitude = np.abs(e)
            rel = np.where(diff == 0, 0.0, diff / magnitude)
            rel = np.where(np.isnan(rel), np.inf, rel)
            allowed = self.atol + self.rtol * np.where(np.isfinite(magnitude), magnitude, 0.0)
            bad = diff > allowed
            usage = np.where(diff == 0, 0.0, diff / allowed)  # x/0 -> inf when nothing is allowed
        finite = diff[np.isfinite(diff)]
        self.max_abs_error = float(diff.max())
        self.max_rel_error = float(rel.max())
        self.rmse = float(np.sqrt(np.mean(finite ** 2))) if finite.size else math.inf
        self.mismatches = int(np.count_nonzero(bad))
        if self.max_abs_error > 0:
            flat = int(np.argmax(np.where(np.isnan(usage), np.inf, usage)))
            self.worst_index = tuple(int(i) for i in np.unravel_index(flat, a.shape))
            self.worst_actual = float(a.reshape(-1)[flat])
            self.worst_expected = float(e.reshape(-1)[flat])
        self.ok = self.mismatches == 0

    def __bool__(self) -> bool:
        return self.ok

    # ---- presentation -----------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """``"OK"`` or ``"FAIL"``."""
        return "OK" if self.ok else "FAIL"

    def tolerance_text(self) -> str:
        """The tolerance rule and its numbers, as one line of text."""
        rule = "" if self.atol_given else " = rtol * max|expected|"
        return f"|diff| <= atol + rtol*|expected|, rtol={self.rtol:.3g}, atol={self.atol:.3g}{rule}"

    def worst_text(self) -> str:
        """The worst element, its two values and their difference, as one line of text."""
        if self.worst_index is None:
            return "- (all equal)" if self.size else "-"
        return (f"{list(self.worst_index)}: actual {self.worst_actual:.9g}, expected {self.worst_expected:.9g}, "
                f"|diff| {abs(self.worst_actual - self.worst_expected):.3g}")

    def rows(self) -> List[Tuple[str, str]]:
        """(label, text) pairs, the content of the text and HTML forms."""
        if not self.shape_ok:
            return [("result", "FAIL: shapes differ"),
                    ("shapes", f"actual {self.actual_shape} ({self.actual_dtype}), "
                               f"expected {self.expected_shape} ({self.expected_dtype})")]
        return [("result", self.status),
                ("shape", f"{self.actual_shape}, {self.size} values ({self.actual_dtype} vs {self.expected_dtype})"),
                ("max abs error", f"{self.max_abs_error:.3g}"),
                ("max rel error", f"{self.max_rel_error:.3g}"),
                ("rmse", f"{self.rmse:.3g}"),
                ("mismatches", f"{self.mismatches} of {self.size}"),
                ("tolerance", self.tolerance_text()),
                ("worst element", self.worst_text())]

    def __repr__(self) -> str:
        rows = self.rows()
        width = max(len(label) for label, _ in rows[1:])
        return f"Comparison: {rows[0][1]}\n" + "\n".join(f"  {label.ljust(width)}  {text}" for label, text in rows[1:])

    __str__ = __repr__

    def _repr_html_(self) -> str:
        rows = self.rows()
        color = _OK_STYLE if self.ok else _FAIL_STYLE
        cells = "".join(f'<tr><th style="padding:1px 8px;text-align:left">{html.escape(label)}</th>'
                        f'<td style="padding:1px 8px;text-align:left">{html.escape(text)}</td></tr>'
                        for label, text in rows[1:])
        return (f'<div class="bnns-py-repr"><div style="font-family:monospace;font-weight:bold;{color}">'
                f"Comparison: {html.escape(rows[0][1])}</div>"
                f'<table style="border-collapse:collapse;font-family:monospace;font-size:12px">{cells}</table></div>')

    def as_dict(self) -> Dict[str, Any]:
        """The numbers as a plain dict (JSON-friendly)."""
        return {name: getattr(self, name) for name in self.__slots__}


def compare(actual: Any, expected: Any, rtol: float = 1e-5, atol: Optional[float] = None) -> Comparison:
    """Compare ``actual`` with ``expected`` element by element.

    An element passes when ``|actual - expected| <= atol + rtol * |expected|``; NaN matches NaN
    and an infinity the same infinity. See the module docstring for why ``atol`` defaults to
    ``rtol * max|expected|``.

    Parameters
    ----------
    actual, expected : array_like or torch.Tensor
        The values to compare, of the same shape (no broadcasting). numpy arrays, anything
        ``np.asarray`` accepts, or PyTorch tensors (detached and copied to the CPU). Real numbers
        only: integer, boolean or floating dtypes.
    rtol : float, optional
        Relative tolerance, ``>= 0`` (default 1e-5, about 100 float32 ulps).
    atol : float, optional
        Absolute tolerance, ``>= 0``. Default: ``rtol`` times the largest finite ``|expected|``;
        pass 0 for a purely relative check.

    Returns
    -------
    Comparison
        The statistics; its ``ok`` is False when the shapes differ.

    Raises
    ------
    ValueError
        ``rtol`` or ``atol`` is negative or not a number.
    TypeError
        An input is not numeric (complex, object or string arrays).

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import compare
    >>> expected = np.linspace(-1, 1, 5)
    >>> compare(expected + 1e-7, expected).ok
    True
    >>> compare(expected + 1e-7, expected, atol=0).mismatches     # 0.0 itself allows no error
    1
    >>> compare(np.zeros(3), np.zeros(4)).ok
    False
    """
    return Comparison(actual, expected, rtol, atol)


def assert_close(actual: Any, expected: Any, rtol: float = 1e-5, atol: Optional[float] = None,
                 msg: Optional[str] = None) -> Comparison:
    """Raise ``AssertionError`` with the :func:`compare` summary unless ``actual`` matches.

    Parameters
    ----------
    actual, expected, rtol, atol
        As for :func:`compare`.
    msg : str, optional
        A first line for the error message.

    Returns
    -------
    Comparison
        The comparison, when it passes.

    Raises
    ------
    AssertionError
        Some element is outside the tolerance, or the shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import assert_close
    >>> assert_close(np.float32([1, 2, 3]), [1, 2, 3]).max_abs_error
    0.0
    >>> assert_close([1.0, 2.1], [1.0, 2.0], msg="second value")
    Traceback (most recent call last):
    ...
    AssertionError: second value
    Comparison: FAIL
    ...
    """
    comparison = compare(actual, expected, rtol, atol)
    if not comparison.ok:
        prefix = f"{msg}\n" if msg else ""
        raise AssertionError(prefix + repr(comparison))
    return comparison


class ComparisonTable:
    """Several named ``Comparison`` objects as one table, one row each, for notebooks and logs.

    Build one with :func:`comparison_table`. ``bool(table)`` is ``table.ok``.

    Parameters
    ----------
    comparisons : mapping or iterable of (name, Comparison)
        The rows, in order.

    Attributes
    ----------
    comparisons : dict
        ``{name: Comparison}``.

    Raises
    ------
    TypeError
        A value is not a ``Comparison``.
    """

    header = ("", "result", "shape", "max abs error", "max rel error", "rmse", "mismatches", "atol", "worst element")

    def __init__(self, comparisons: Union[Mapping[Any, Comparison], Iterable[Tuple[Any, Comparison]]]) -> None:
        self.comparisons = dict(comparisons)
        for name, comparison in self.comparisons.items():
            if not isinstance(comparison, Comparison):
                raise TypeError(f"{name!r} is a {type(comparison).__name__}, not a Comparison")

    @property
    def ok(self) -> bool:
        """Every comparison passed."""
        return all(c.ok for c in self.comparisons.values())

    def __bool__(self) -> bool:
        return self.ok

    def rows(self) -> List[Tuple[str, ...]]:
        """One tuple of cell texts per comparison, in ``header`` order."""
        out: List[Tuple[str, ...]] = []
        for name, c in self.comparisons.items():
            if not c.shape_ok:
                out.append((str(name), "FAIL", f"{c.actual_shape} vs {c.expected_shape}", "-", "-", "-", "-", "-", "-"))
                continue
            worst = "-" if c.worst_index is None else str(list(c.worst_index))
            out.append((str(name), c.status, str(c.actual_shape), f"{c.max_abs_error:.3g}", f"{c.max_rel_error:.3g}",
                        f"{c.rmse:.3g}", f"{c.mismatches}/{c.size}", f"{c.atol:.3g}", worst))
        return out

    def __repr__(self) -> str:
        rows = [self.header] + self.rows()
        widths = [max(len(row[k]) for row in rows) for k in range(len(self.header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        rows = self.rows()
        styles = [_OK_STYLE if row[1] == "OK" else _FAIL_STYLE for row in rows]
        title = f"{len(rows)} comparisons: {'all OK' if self.ok else 'FAILURES'}"
        return str(grid_html(title, self.header, rows, styles))  # type: ignore[no-untyped-call]


def comparison_table(comparisons: Union[Mapping[Any, Comparison],
                                        Iterable[Tuple[Any, Comparison]]]) -> ComparisonTable:
    """Put several named comparisons in one table.

    Parameters
    ----------
    comparisons : mapping or iterable of (name, Comparison)
        The rows, in order.

    Returns
    -------
    ComparisonTable
        Prints as aligned text, renders as HTML in notebooks; ``.ok`` when every row passed.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import compare, comparison_table
    >>> table = comparison_table({"y": compare(np.ones(3), np.ones(3)),
    ...                           "dx": compare(np.zeros(2), np.ones(2))})
    >>> table.ok
    False
    >>> print(table)  # doctest: +NORMALIZE_WHITESPACE
        result  shape  max abs error  max rel error  rmse  mismatches  atol   worst element
    y   OK      (3,)   0              0              0     0/3         1e-05  -
    dx  FAIL    (2,)   1              1              1     2/2         1e-05  [0]
    """
    return ComparisonTable(comparisons)


__all__ = ["Comparison", "ComparisonTable", "assert_close", "compare", "comparison_table", "default_atol"]
