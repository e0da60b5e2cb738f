"""The sha256 of a stream (:class:`Sha256`, for :class:`~htools.runtime.streams.Counting`
with ``digest=True``): hashed on the caller's thread, or by the process's one hashing
thread when a core is spare for it (:func:`spare_core`), from pooled buffers (:func:`lend`)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor


class Sha256:
    """The sha256 of a stream's bytes, hashed off the calling thread once it is big.

    The first :data:`SYNC` bytes are hashed inline (a tiny shard never waits for a
    thread); later ones are hashed, in order, by the process's one hashing thread, in
    batches of about :data:`BATCH` bytes, while the caller goes on (hashlib releases the
    GIL while it hashes).  A piece of :data:`BY_REF` bytes or more goes into the batch as
    it is when nothing can change it: a ``bytes`` object (a field of a MiB or more), or
    one ``update(data, handed=True)`` hands over (the tar writer's own buffer, which it
    drops once written); other pieces are copied into recycled :data:`BATCH`-byte
    buffers (the caller may reuse what it wrote; fresh memory costs page faults, more
    than the copy), unless the caller filled such a buffer itself and hands it over
    (:meth:`take`: a local output's gathered pieces, see
    :class:`~htools.runtime.streams.Counting`).  So a
    batch is one or a few calls of hashlib: after each the thread must take the GIL
    back from the task thread, which gives it up only at its reads
    and writes (or after 5 ms); 128 KiB fields hashed as they were made 14 calls a MB,
    and the thread's waits inside its batches 1.17 ms a MB against 0.54 copied (one
    worker's in-process task on a loaded machine), for 0.08 ms a MB of copying on the
    task thread.  At most :data:`AHEAD` bytes wait for that thread; :meth:`hexdigest`
    waits for the rest.

    The thread pays only with a core to spare: it costs about a third more CPU than
    hashing inline (the copies, the hand-overs, the bytes read on another core), so
    where every core is busy (as many task threads as cores, or other processes) it
    slows the machine's other work more than it speeds this stream.  ``threaded``
    None asks :func:`spare_core` once the stream is past SYNC (once a shard); True or
    False decide.
    """

    SYNC = 1 << 20
    BATCH = 1 << 20
    AHEAD = 8 << 20
    BY_REF = 1 << 20  # a piece this large (that nothing can change) is hashed as it is

    def __init__(self, threaded: bool | None = None) -> None:
        self.hash = hashlib.sha256()
        self.threaded = threaded  # None: decided once the stream is past SYNC
        self.size = 0
        self._buf: bytearray | None = None
        self._start = 0  # the current buffer's bytes from here on are in no part yet
        self._fill = 0
        self._parts: list = []  # the next batch, in order: bytes, or (buffer, start, end)
        self._bufs: list[bytearray] = []  # buffers to recycle once that batch is hashed
        self._pending = 0  # bytes of the next batch
        self._queued: deque[tuple[Future, int]] = deque()
        self._ahead = 0

    def _inline(self) -> bool:
        """Whether the next bytes are hashed on the caller's thread (deciding, once
        the stream is past SYNC, whether a core is spare for the hashing thread)."""
        if self.threaded is None and self.size >= self.SYNC:
            self.threaded = spare_core()
            CHOSEN["thread" if self.threaded else "inline"] += 1
        return self.size < self.SYNC or not self.threaded

    def take(self, buf: bytearray, n: int) -> None:
        """Hash ``buf[:n]`` next, uncopied: a buffer of the process's pool
        (:func:`lend`) the caller hands over; it goes back to the pool once hashed."""
        if self._inline():
            with memoryview(buf) as view, view[:n] as piece:
                self.hash.update(piece)
            self.size += n
            _recycle(buf)
            return
        self.size += n
        self._cut()
        self._parts.append((buf, 0, n))
        self._bufs.append(buf)
        self._pending += n
        if self._pending >= self.BATCH:
            self._submit()

    def update(self, data, handed: bool = False) -> None:
        """Hash ``data`` next; ``handed``: the caller never changes it again (so it
        need not be copied to be hashed later)."""
        if self._inline():
            self.hash.update(data)
            self.size += memoryview(data).nbytes
            return
        view = memoryview(data)
        n = view.nbytes
        self.size += n
        batch = self.BATCH
        if n >= self.BY_REF and (handed or type(data) is bytes):  # hashed as it is
            self._cut()
            self._parts.append(data)
            self._pending += n
            if self._pending >= batch:
                self._submit()
            return
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        pos = 0
        while pos < n:
            if self._buf is None:
                self._buf = lend(batch)
                self._start = self._fill = 0
            fill = self._fill
            take = min(batch - fill, n - pos)
            self._buf[fill:fill + take] = view[pos:pos + take] if take < n else view
            self._fill = fill + take
            self._pending += take
            pos += take
            if self._pending >= batch:
                self._submit()

    def _cut(self) -> None:
        """The current buffer's bytes not yet in a part become one."""
        if self._fill > self._start:
            self._parts.append((self._buf, self._start, self._fill))
            self._start = self._fill

    def _submit(self) -> None:
        """Queue the next batch (the current buffer goes with it)."""
        self._cut()
        if self._buf is not None:
            self._bufs.append(self._buf)
            self._buf = None
        parts, bufs, n = self._parts, self._bufs, self._pending
        self._parts, self._bufs, self._pending = [], [], 0
        if not parts:
            for buf in bufs:
                _recycle(buf)
            return
        queued = self._queued
        while queued and queued[0][0].done():
            self._ahead -= queued.popleft()[1]
        queued.append((_hasher().submit(_hash_parts, self.hash, parts, bufs), n))
        self._ahead += n
        if self._ahead > self.AHEAD:
            t0 = time.perf_counter()
            while self._ahead > self.AHEAD:
                future, m = queued.popleft()
                future.result()
                self._ahead -= m
            WAITED["ahead"] += time.perf_counter() - t0

    def hexdigest(self) -> str:
        self._submit()
        if self._queued:
            t0 = time.perf_counter()
            while self._queued:
                self._queued.popleft()[0].result()
            WAITED["end"] += time.perf_counter() - t0
        self._ahead = 0
        return self.hash.hexdigest()


# This process's streams by where spare_core() had them hashed (one under SYNC never
# asks), and the seconds their callers waited for the hashing thread: with AHEAD bytes
# queued, and for the rest at hexdigest() (benchmarks/bench_mapper.py shows both).
CHOSEN = {"thread": 0, "inline": 0}
WAITED = {"ahead": 0.0, "end": 0.0}
SPARE = 0.5  # of a core left by all other work (the caller's own thread too): the thread pays
SPARE_EVERY = 0.25  # seconds between looks at the machine's load (shorter shards reuse one)
_seen: list = []  # the last look: (time, machine's busy seconds, the thread's), decision
_hashed = [0.0]  # CPU seconds the hashing thread has used (it sets this after each batch)


def spare_core() -> bool:
    """Whether a core is free for the hashing thread: of the machine's cores, all the
    work but that thread's (``/proc/stat``'s busy time, the task threads of this process
    too) since the last look leaves at least :data:`SPARE` of one.  Looks at most every
    :data:`SPARE_EVERY` seconds (tiny shards reuse the last answer); True without
    ``/proc/stat`` or before there is an interval to judge (the thread, as always)."""
    now = time.monotonic()
    if _seen and now - _seen[0][0] < SPARE_EVERY:
        return _seen[1]
    busy = machine_busy()
    if busy is None:
        return True
    threaded = True
    if _seen:
        (t0, busy0, hashed0), _ = _seen
        others = max(0.0, (busy - busy0) - (_hashed[0] - hashed0)) / (now - t0)
        threaded = has_spare(_cores(), others)
    _seen[:] = [(now, busy, _hashed[0]), threaded]
    return threaded


def machine_busy() -> float | None:
    """Seconds of CPU the machine's cores have been busy since boot (``/proc/stat``: all
    but idle and I/O wait); None where there is no such file."""
    try:
        with open("/proc/stat", "rb") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLOCK


def has_spare(cores: int, others: float) -> bool:
    """With ``others`` cores busy on average with all work but the hashing thread's,
    whether :data:`SPARE` of a core is left for it."""
    return cores - others >= SPARE


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


try:
    _CLOCK = float(os.sysconf("SC_CLK_TCK"))
except (AttributeError, ValueError, OSError):
    _CLOCK = 100.0


_free: list[bytearray] = []  # hashed buffers, for reuse
_KEEP = 10  # AHEAD / BATCH, and two more


def lend(size: int) -> bytearray:
    """A buffer of ``size`` bytes from the pool of hashed ones (else a new one)."""
    while True:
        try:  # another writer thread may take the last one between a test and a pop
            buf = _free.pop()
        except IndexError:
            return bytearray(size)
        if len(buf) == size:
            return buf


def _recycle(buf: bytearray) -> None:
    if len(_free) < _KEEP:
        _free.append(buf)


def _hash_parts(hash, parts: list, bufs: list[bytearray]) -> None:
    """The hashing thread's work: one batch of a stream, in order."""
    for part in parts:
        if type(part) is tuple:
            buf, start, end = part
            with memoryview(buf) as view, view[start:end] as piece:
                hash.update(piece)
        else:
            hash.update(part)
    for buf in bufs:
        _recycle(buf)
    _hashed[0] = time.thread_time()


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
