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


def _refuse(obj: object, name: str) -> None:
    kind = type(obj).__name__
    raise AttributeError(f"{kind}.{name} is fixed when the {kind} is made: make a new one for another {name}")


class FixedAttributes:
    """Public attributes set once, when the object is made: a filter is made from them, so a later
    assignment raises ``AttributeError`` rather than being ignored. (Properties with setters, such
    as a module's ``weight``, stay assignable.) For classes that set no attribute on their call
    path: a Python ``__setattr__`` costs every assignment about 0.4 us."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name in self.__dict__:
            _refuse(self, name)
        object.__setattr__(self, name, value)


def fixed_attribute(name: str, doc: str) -> Any:
    """A read-only property over ``_<name>``, refusing assignment as :class:`FixedAttributes`
    does, for classes whose call path sets attributes."""
    private = "_" + name

    def get(obj: Any) -> Any:
        return getattr(obj, private)

    def refuse(obj: Any, value: Any) -> None:
        _refuse(obj, name)

    return property(get, refuse, doc=doc)
