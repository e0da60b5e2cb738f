"""Small stream wrappers shared by the task functions (the sha256 a :class:`Counting`
keeps is :mod:`.hashing`'s)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from htools.errors import HtoolsError, hide_credentials
from htools.runtime.hashing import Sha256, lend
from htools.summary import ShardResult


def distinct_keys(samples: Iterator[dict], where: str, remedy: str) -> Iterator[dict]:
    """Pass samples through, refusing two in a row with one ``__key__``: a tar reader
    would join them into one sample (or reject the repeated fields)."""
    previous = None
    for sample in samples:
        if sample["__key__"] == previous:
            raise repeated_key(where, previous, remedy)
        previous = sample["__key__"]
        yield sample


def repeated_key(where: str, key: str, remedy: str) -> HtoolsError:
    """The error of :func:`distinct_keys` (for a loop that checks keys itself)."""
    return HtoolsError(f"{hide_credentials(where)}: two consecutive samples share the key "
                       f"{key!r}; a tar reader would join them: {remedy}")


GATHER = 1 << 20  # bytes of one gathered piece: written whole and hashed as it is


class Counting:
    """A pass-through stream that adds the bytes it moves to ``result.<attr>``, and
    with ``digest=True`` keeps the sha256 of the bytes it moves (``hexdigest()``).

    ``handed(data)``, when set, tells which written buffers their writer hands over (it
    never changes them once written): those are hashed without a copy.

    ``gather=True`` (with ``digest``; for a ``raw`` that keeps no reference to what it
    was given once ``write()`` returns, such as a local file) copies small writes into
    one pooled :data:`GATHER`-byte buffer, written whole (the local writer passes it
    straight to the file) and then hashed as it is: one copy of each byte where
    otherwise the file's buffer and the hasher's batch took one each (128 KiB fields,
    which the tar writer writes as they are).  Large immutable or handed pieces go
    through uncopied; :meth:`flush` writes what is gathered."""

    def __init__(self, raw, result: ShardResult, attr: str, digest: bool = False,
                 gather: bool = False):
        self.raw = raw
        self.result = result
        self.attr = attr
        self.hash = Sha256() if digest else None
        self.handed: Callable[[object], bool] | None = None
        self._gather = gather and digest
        self._buf: bytearray | None = None  # the piece being gathered
        self._fill = 0

    def hexdigest(self) -> str:
        return self.hash.hexdigest() if self.hash is not None else ""

    def _add(self, n: int) -> None:
        setattr(self.result, self.attr, getattr(self.result, self.attr) + n)

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read(n)
        self._add(len(b))
        if self.hash is not None:
            self.hash.update(b)
        return b

    def readinto(self, buf) -> int:
        n = self.raw.readinto(buf) or 0
        self._add(n)
        if self.hash is not None:
            self.hash.update(memoryview(buf)[:n])
        return n

    def write(self, b) -> int:
        if self._gather:
            n = self._gathered(b)
        else:
            self.raw.write(b)
            if self.hash is not None:
                self.hash.update(b, self.handed is not None and self.handed(b))
            n = len(b)
        self._add(n)
        return n

    def _gathered(self, b) -> int:
        """:meth:`write` with ``gather``."""
        view = memoryview(b)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = view.nbytes
        if n >= GATHER and (type(b) is bytes or (self.handed is not None and self.handed(b))):
            self._spill()  # (what was gathered goes first)
            self.raw.write(b)
            self.hash.update(b, True)  # type: ignore[union-attr]
            return n
        buf, fill, pos = self._buf, self._fill, 0
        while pos < n:
            if buf is None:
                buf, fill = lend(GATHER), 0
            take = min(GATHER - fill, n - pos)
            buf[fill:fill + take] = view[pos:pos + take] if take < n else view
            fill += take
            pos += take
            if fill == GATHER:
                self.raw.write(buf)
                self.hash.take(buf, fill)  # type: ignore[union-attr]
                buf = None
        self._buf, self._fill = buf, fill
        return n

    def _spill(self) -> None:
        """Write and hash what is gathered (the buffer goes back to the pool once hashed)."""
        buf, fill = self._buf, self._fill
        if buf is None:
            return
        self._buf, self._fill = None, 0
        if fill:
            with memoryview(buf) as view, view[:fill] as piece:
                self.raw.write(piece)
        self.hash.take(buf, fill)  # type: ignore[union-attr]

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        if self._buf is not None:
            self._spill()

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False
