"""Exceptions raised by bnns-py.

Usage errors (wrong shapes, dtypes, parameter values) are ``ValueError``/``TypeError`` raised in
Python before any C call. ``BNNSError`` is raised when BNNS itself refuses: a create call returned
NULL or an apply call returned -1. Its ``kind`` mirrors the Swift overlay's ``BNNS.Error`` case.
"""
from typing import Iterable, Optional, Tuple


class BNNSError(RuntimeError):
    """BNNS refused an operation: a create function returned NULL or an apply function -1.

    Parameters
    ----------
    message : str
        The exception's text.
    kind : str, optional
        The Swift ``BNNS.Error`` case: ``"unable_to_create_layer"``, ``"layer_apply_fail"``
        (the default), ``"array_descriptor_invalid_data"`` or ``"optimizer_step_fail"``.
    function : str, optional
        The C function that failed.
    reason : str, optional
        Why, when known: the portable backend reports reasons; Accelerate only writes them to the
        system log.

    Attributes
    ----------
    kind : str
        As the parameter.
    function : str or None
        As the parameter.
    reason : str or None
        As the parameter.

    Examples
    --------
    >>> from bnns_py import BNNSError
    >>> error = BNNSError("BNNSFilterCreateLayerConvolution returned NULL",
    ...                   kind="unable_to_create_layer", reason="groups must divide the channels")
    >>> error.kind, error.reason
    ('unable_to_create_layer', 'groups must divide the channels')
    """

    def __init__(self, message: str, kind: str = "layer_apply_fail", function: Optional[str] = None,
                 reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.function = function
        self.reason = reason


class LayerClosedError(BNNSError, ValueError):
    """The layer's filter was already destroyed by ``close()`` (or a ``with`` block).

    A ``ValueError`` too, as calling a method of a closed file is.

    Parameters
    ----------
    what : str, optional
        What is closed, for the message (default ``"layer"``).

    Examples
    --------
    >>> from bnns_py import LayerClosedError
    >>> str(LayerClosedError("Conv2d"))
    'Conv2d is closed: its BNNS filter was destroyed'
    >>> isinstance(LayerClosedError(), ValueError)
    True
    """

    def __init__(self, what: str = "layer") -> None:
        super().__init__(f"{what} is closed: its BNNS filter was destroyed", kind="layer_apply_fail")


class LibraryNotFoundError(OSError):
    """No BNNS library could be loaded; the message lists every path tried and why it failed.

    Parameters
    ----------
    backend : str
        The backend that was asked for: ``"accelerate"`` or ``"portable"``.
    attempts : iterable of (str, str)
        ``(path, why it failed)`` for every library tried.

    Attributes
    ----------
    backend : str
        As the parameter.
    attempts : list of (str, str)
        As the parameter.

    Examples
    --------
    >>> from bnns_py import LibraryNotFoundError
    >>> error = LibraryNotFoundError("portable", [("/opt/libbnns.so", "no such file")])
    >>> print(str(error).splitlines()[1])
      /opt/libbnns.so: no such file
    """

    def __init__(self, backend: str, attempts: Iterable[Tuple[str, str]]) -> None:
        self.backend = backend
        self.attempts = list(attempts)
        lines = [f"could not load the {backend!r} BNNS backend; tried:"]
        lines += [f"  {path}: {why}" for path, why in self.attempts]
        lines.append("Set BNNS_PY_LIBRARY=/path/to/library or BNNS_PY_BACKEND=accelerate|portable "
                     "to choose another library; reinstall bnns-py to rebuild the portable one.")
        super().__init__("\n".join(lines))
