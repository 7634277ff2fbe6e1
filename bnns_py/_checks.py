"""Argument checks shared by the layer and functional APIs."""
from typing import Any, Tuple


def is_int(value: object) -> bool:
    """True for Python and numpy integers, not for bools."""
    return not isinstance(value, bool) and hasattr(value, "__index__")


def int_pair(name: str, value: Any, minimum: int) -> Tuple[int, int]:
    """An int or a pair of ints, each >= ``minimum``, as a tuple of two ints."""
    if is_int(value):
        value = (value, value)
    try:
        first, second = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    for v in (first, second):
        if not is_int(v) or int(v) < minimum:
            raise ValueError(f"{name} values must be integers >= {minimum}, got {value!r}")
    return int(first), int(second)
