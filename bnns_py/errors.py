"""Exceptions raised by bnns-py.

Usage errors (wrong shapes, dtypes, parameter values) are ``ValueError``/``TypeError`` raised in
Python before any C call. ``BNNSError`` is raised when BNNS itself refuses: a create call returned
NULL or an apply call returned -1. Its ``kind`` mirrors the Swift overlay's ``BNNS.Error`` case.
"""


class BNNSError(RuntimeError):
    """BNNS refused an operation.

    Attributes:
        kind: the Swift ``BNNS.Error`` case this corresponds to: ``"unable_to_create_layer"``,
            ``"layer_apply_fail"``, ``"array_descriptor_invalid_data"`` or ``"optimizer_step_fail"``.
        function: the C function that failed, if any.
        reason: why, when known (the portable backend reports reasons; Accelerate only logs them).
    """

    def __init__(self, message, kind="layer_apply_fail", function=None, reason=None):
        super().__init__(message)
        self.kind = kind
        self.function = function
        self.reason = reason


class LayerClosedError(BNNSError, ValueError):
    """The layer's filter was already destroyed by ``close()``."""

    def __init__(self, what="layer"):
        super().__init__(f"{what} is closed: its BNNS filter was destroyed", kind="layer_apply_fail")


class LibraryNotFoundError(OSError):
    """No BNNS library could be loaded. The message lists every path tried and why it failed."""

    def __init__(self, backend, attempts):
        self.backend = backend
        self.attempts = list(attempts)
        lines = [f"could not load the {backend!r} BNNS backend; tried:"]
        lines += [f"  {path}: {why}" for path, why in self.attempts]
        lines.append("Set BNNS_PY_LIBRARY=/path/to/library or BNNS_PY_BACKEND=accelerate|portable "
                     "to choose another library; reinstall bnns-py to rebuild the portable one.")
        super().__init__("\n".join(lines))
