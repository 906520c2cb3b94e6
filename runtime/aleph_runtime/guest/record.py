"""Record: a frozen value class, what @dataclass(frozen=True) gives the init's few
value types (settings, the parsed config, paths, mounted volumes), for less.

@dataclass writes each class's __init__, __eq__, __hash__, __repr__ and __setattr__ as
source and exec()s it when the module is imported, and importing dataclasses pulls in
copy: measured with valgrind, the config module's three dataclasses cost more
instructions than the rest of the init's own modules together, at every boot (tens of
milliseconds under emulation). A Record subclass lists its fields in `__slots__` and
fills them from its own __init__ with `_fill(locals())`.
"""

from __future__ import annotations


class Record:
    __slots__ = ()

    def _fill(self, values: dict) -> None:
        """Set every field from `values` (the subclass __init__'s locals())."""
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot change")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be deleted")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
