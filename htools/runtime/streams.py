"""Small stream wrappers shared by the task functions."""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from htools.errors import HtoolsError, hide_credentials
from htools.summary import ShardResult


def distinct_keys(samples: Iterator[dict], where: str, remedy: str) -> Iterator[dict]:
    """Pass samples through, refusing two in a row with one ``__key__``: a tar reader
    would join them into one sample (or reject the repeated fields)."""
    previous = None
    for sample in samples:
        if sample["__key__"] == previous:
            raise HtoolsError(f"{hide_credentials(where)}: two consecutive samples share the "
                              f"key {previous!r}; a tar reader would join them: {remedy}")
        previous = sample["__key__"]
        yield sample


class Sha256:
    """The sha256 of a stream's bytes, hashed off the calling thread once it is big.

    The first :data:`SYNC` bytes are hashed inline (a tiny shard never waits for a
    thread); later ones are copied into :data:`BATCH`-byte buffers (the caller may
    reuse what it wrote) and hashed, in order, by the process's one hashing thread,
    which runs while the caller goes on (hashlib releases the GIL while it hashes).
    Buffers are recycled: fresh memory costs page faults, more than the copy.  A
    ``bytes`` object of BATCH bytes or more is hashed as it is.  At most
    :data:`AHEAD` bytes wait for that thread; :meth:`hexdigest` waits for the rest.
    """

    SYNC = 1 << 20
    BATCH = 1 << 20
    AHEAD = 8 << 20

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self._buf: bytearray | None = None
        self._fill = 0
        self._queued: deque[tuple[Future, int]] = deque()
        self._ahead = 0

    def update(self, data) -> None:
        if self.size < self.SYNC:
            self.hash.update(data)
            self.size += memoryview(data).nbytes
            return
        view = memoryview(data)
        n = view.nbytes
        self.size += n
        batch = self.BATCH
        if n >= batch and type(data) is bytes:  # immutable: hashed as it is
            self._submit()
            self._submit(data)
            return
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        pos = 0
        while pos < n:
            if self._buf is None:
                self._buf = _buffer(batch)
                self._fill = 0
            fill = self._fill
            take = min(batch - fill, n - pos)
            self._buf[fill:fill + take] = view[pos:pos + take] if take < n else view
            self._fill = fill + take
            pos += take
            if self._fill >= batch:
                self._submit()

    def _submit(self, data: bytes | None = None) -> None:
        """Queue ``data``, or the filled part of the current buffer."""
        if data is None:
            buf, n = self._buf, self._fill
            self._buf, self._fill = None, 0
            if buf is None or not n:
                if buf is not None:
                    _recycle(buf)
                return
            job = (_hash_buffer, self.hash, buf, n)
        else:
            n = len(data)
            job = (self.hash.update, data)
        queued = self._queued
        while queued and queued[0][0].done():
            self._ahead -= queued.popleft()[1]
        queued.append((_hasher().submit(*job), n))
        self._ahead += n
        while self._ahead > self.AHEAD:
            future, m = queued.popleft()
            future.result()
            self._ahead -= m

    def hexdigest(self) -> str:
        self._submit()
        while self._queued:
            self._queued.popleft()[0].result()
        self._ahead = 0
        return self.hash.hexdigest()


_free: list[bytearray] = []  # hashed buffers, for reuse
_KEEP = 10  # AHEAD / BATCH, and two more


def _buffer(size: int) -> bytearray:
    while _free:
        buf = _free.pop()
        if len(buf) == size:
            return buf
    return bytearray(size)


def _recycle(buf: bytearray) -> None:
    if len(_free) < _KEEP:
        _free.append(buf)


def _hash_buffer(hash, buf: bytearray, n: int) -> None:
    with memoryview(buf) as view, view[:n] as part:
        hash.update(part)
    _recycle(buf)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _hasher() -> ThreadPoolExecutor:
    """The process's hashing thread: one, so each stream's batches run in order."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="htools-sha256")
    return _pool


class Counting:
    """A pass-through stream that adds the bytes it moves to ``result.<attr>``, and
    with ``digest=True`` keeps the sha256 of the bytes it moves (``hexdigest()``)."""

    def __init__(self, raw, result: ShardResult, attr: str, digest: bool = False):
        self.raw = raw
        self.result = result
        self.attr = attr
        self.hash = Sha256() if digest else None

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
        self.raw.write(b)
        if self.hash is not None:
            self.hash.update(b)
        n = len(b)
        self._add(n)
        return n

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False
