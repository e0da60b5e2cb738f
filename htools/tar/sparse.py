"""GNU sparse members for the tar reader (:mod:`htools.tar.read`): old GNU ``S``
headers (with their extension blocks) and pax sparse 0.0, 0.1 and 1.0 come out as the
real file, the holes as zeros, as Python's tarfile and GNU tar read them.  A mixin of the
reader's scanner: only the slow path ever reaches it."""

from __future__ import annotations

import os

from htools.errors import TarFormatError
from htools.tar.header import (
    BLOCK,
    MAX_SPARSE_REGIONS,
    SPARSE_EXT_ENTRIES,
    SPARSE_EXT_EXTENDED,
    SPARSE_OLD_EXTENDED,
    SPARSE_OLD_OFFSET,
    SPARSE_OLD_REALSIZE,
    number,
    sparse_expand,
    sparse_map_10,
    sparse_pairs,
)


class SparseReading:
    """The sparse-member methods of the reader's scanner."""

    def sparse_error(self, why: str, name: str | None, hoff: int) -> TarFormatError:
        return TarFormatError(self.url, why, member=name, offset=hoff)

    def sparse_records(self, records: dict[str, str], items: list[tuple[str, str]],
                       name: str, hoff: int) -> _PaxSparse:
        """The sparse layout that GNU.sparse.* pax records announce for member ``name``.

        Like GNU tar, ``GNU.sparse.major`` 1 means 1.0 (map in the data); else
        ``GNU.sparse.map`` means 0.1 and repeated offset/numbytes records 0.0.
        """
        major, minor = records.get("GNU.sparse.major"), records.get("GNU.sparse.minor")
        try:
            if major is not None or minor is not None:
                if (major, minor) != ("1", "0"):
                    raise ValueError(f"unsupported GNU sparse version {major}.{minor}")
                regions = None  # at the start of the member's data
                realsize = records.get("GNU.sparse.realsize", records.get("GNU.sparse.size"))
            else:
                if "GNU.sparse.map" in records:
                    text = records["GNU.sparse.map"]
                    regions = sparse_pairs([int(x) for x in text.split(",")] if text else [])
                else:
                    offsets = [int(v) for k, v in items if k == "GNU.sparse.offset"]
                    sizes = [int(v) for k, v in items if k == "GNU.sparse.numbytes"]
                    if len(offsets) != len(sizes):
                        raise ValueError("sparse map (pax 0.0) with unpaired "
                                         "offset/numbytes records")
                    regions = list(zip(offsets, sizes))
                count = records.get("GNU.sparse.numblocks")
                if count is not None and int(count) != len(regions):
                    raise ValueError(f"sparse map of {len(regions)} regions, "
                                     f"GNU.sparse.numblocks says {count}")
                realsize = records.get("GNU.sparse.size")
            if realsize is None:
                raise ValueError("GNU sparse records without the real size")
            return _PaxSparse(regions, int(realsize))
        except ValueError as exc:
            why = str(exc)
            if why.startswith("invalid literal"):
                why = f"bad number in GNU sparse pax records: {why}"
            raise self.sparse_error(why, name, hoff) from None

    def pax_sparse(self, sparse: _PaxSparse, data: bytes, name: str, hoff: int) -> bytes:
        """The real file of a pax sparse member whose stored data is ``data``."""
        try:
            if sparse.regions is None:  # 1.0
                regions, start = sparse_map_10(data)
                if start > len(data):
                    raise ValueError("sparse map (pax 1.0) runs past the member's data")
                return self.expand(memoryview(data)[start:], regions, sparse.realsize)
            return self.expand(data, sparse.regions, sparse.realsize)
        except ValueError as exc:
            raise self.sparse_error(str(exc), name, hoff) from None

    def old_gnu_sparse(self, h: bytes, name: str, size: int, hoff: int, pos: int,
                       end: int) -> tuple[str, bytes, int, int]:
        """An old GNU 'S' member: map in the header, extension blocks, then the data."""
        try:
            realsize = number(h[SPARSE_OLD_REALSIZE:SPARSE_OLD_REALSIZE + 12])
            regions = _old_sparse_regions(h, SPARSE_OLD_OFFSET, 4)
        except ValueError as exc:
            raise self.sparse_error(f"bad sparse map in GNU sparse header: {exc}", name,
                                    hoff) from None
        extended = h[SPARSE_OLD_EXTENDED]
        while extended:
            if end - pos < 2 * BLOCK:  # the block after the one at pos
                end = self.fill(pos, end, 2 * BLOCK)
                pos = 0
                if end < 2 * BLOCK:
                    raise self.sparse_error("truncated tar: the stream ends inside a GNU "
                                            "sparse extension header", name, hoff)
            pos += BLOCK  # the extension block now stands where the header stood
            block = self.mv[pos:pos + BLOCK].tobytes()
            try:
                regions += _old_sparse_regions(block, 0, SPARSE_EXT_ENTRIES)
            except ValueError as exc:
                raise self.sparse_error(f"bad sparse map in GNU sparse extension header "
                                        f"at offset {self.base + pos}: {exc}", name,
                                        hoff) from None
            if len(regions) > MAX_SPARSE_REGIONS:
                raise self.sparse_error(f"GNU sparse map of over {MAX_SPARSE_REGIONS} "
                                        "regions", name, hoff)
            extended = block[SPARSE_EXT_EXTENDED]
        data, pos, end = self.member_data(pos, end, size, name, hoff)
        try:
            data = self.expand(data, regions, realsize)
        except ValueError as exc:
            raise self.sparse_error(str(exc), name, hoff) from None
        return name, data, pos, end

    @staticmethod
    def expand(stored: bytes | memoryview, regions: list[tuple[int, int]],
               realsize: int) -> bytes:
        limit = max_real_size()
        if realsize > limit:  # a few stored bytes may claim terabytes of holes
            raise ValueError(f"sparse member of real size {realsize} bytes, over the "
                             f"{limit}-byte limit for a member expanded in memory (set "
                             "$HTOOLS_MAX_SPARSE_SIZE to raise it)")
        try:
            return sparse_expand(stored, regions, realsize)
        except MemoryError:
            raise ValueError(f"sparse member of real size {realsize}: out of memory") from None

    # ---- header checks


def max_real_size() -> int:
    """The largest real size a sparse member may expand to: $HTOOLS_MAX_SPARSE_SIZE
    bytes, default 1 GiB (members are held in memory, holes included)."""
    return int(os.environ.get("HTOOLS_MAX_SPARSE_SIZE", 1 << 30))


class _PaxSparse:
    """A pax sparse member's layout: its regions (None for 1.0: at the start of the data)
    and real size.  (GNU.sparse.name, the real name, is applied in ``pending``.)"""

    __slots__ = ("realsize", "regions")

    def __init__(self, regions: list[tuple[int, int]] | None, realsize: int):
        self.regions = regions
        self.realsize = realsize


def _old_sparse_regions(block: bytes, start: int, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` (offset, numbytes) pairs of 12-byte numbers at ``start``; the map
    ends at the first empty pair, as GNU tar reads it."""
    regions = []
    for pos in range(start, start + 24 * count, 24):
        if not block[pos] and not block[pos + 12]:
            break
        regions.append((number(block[pos:pos + 12]), number(block[pos + 12:pos + 24])))
    return regions


