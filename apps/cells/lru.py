"""A bounded cache that forgets what was used least recently: every cache of the ``Store``.

Not thread-safe by itself: the store reads and writes each of its caches under its own lock.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``limit`` in total of ``weigh(value)`` (1 each by default: ``limit`` entries);
    the least recently used go first, but the newest entry always stays, however heavy."""

    def __init__(self, limit: int, weigh: Callable[[V], int] | None = None):
        if limit < 1:
            raise ValueError(f"an LRU needs a limit of at least 1, got {limit}")
        self.limit = limit
        self._weigh = weigh
        self._items: OrderedDict[K, V] = OrderedDict()
        self._weight = 0

    def _w(self, value: V) -> int:
        return 1 if self._weigh is None else int(self._weigh(value))

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value (now the most recently used), or ``default``."""
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` as the most recently used; drop the least recent beyond the limit."""
        if key in self._items:
            self._weight -= self._w(self._items.pop(key))
        self._items[key] = value
        self._weight += self._w(value)
        while self._weight > self.limit and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._weight -= self._w(old)
        return value

    def pop(self, key: K, default: V | None = None) -> V | None:
        if key not in self._items:
            return default
        value = self._items.pop(key)
        self._weight -= self._w(value)
        return value

    def clear(self) -> None:
        self._items.clear()
        self._weight = 0

    def values(self) -> list[V]:
        return list(self._items.values())

    @property
    def weight(self) -> int:
        """The total weight kept (the number of entries when unweighted)."""
        return self._weight

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        """The keys, least recently used first."""
        return iter(list(self._items))
