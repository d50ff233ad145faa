"""The viewer's caches: the last few things asked for, made on first use, shared by the
server's threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class Recent(Generic[Value]):
    """The last ``size`` values asked for, by key. A value is made outside the lock (making
    one may take seconds; other keys are served meanwhile); if two requests make the same one
    at once, the first kept is the one both get. One dropped is not closed here, since a
    request may still be using it: it goes when its last reference does."""

    def __init__(self, size: int):
        self._size = size
        self._values: OrderedDict[Hashable, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Value]) -> Value:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = make()
        with self._lock:
            if key in self._values:
                return self._values[key]
            self._values[key] = value
            while len(self._values) > self._size:
                self._values.popitem(last=False)
        return value
