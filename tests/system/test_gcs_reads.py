"""GCS reads are of one generation: each block's GET names the generation the first
open saw (gcsfs's read-ahead file GETs whatever is live, so an object overwritten during
a read gave two versions' bytes), and a generation gone fails as "object changed".

The emulator serves the live object whatever generation a GET names, so the pinning is
checked on the requests themselves; a deletion mid-read shows the failure for real."""

from __future__ import annotations

import logging
import random
import uuid

import pytest

from htools import storage
from htools.errors import StorageError
from htools.storage import registry

BLOCK = 8 << 20  # htools.storage.objectio.READ_BLOCK


@pytest.fixture
def gs_url(gcs_server):
    url = f"gs://{gcs_server.bucket}/{uuid.uuid4().hex[:12]}/obj"
    data = random.Random(7).randbytes(2 * BLOCK + 12345)
    with storage.open_write(url, gcs_server.options) as w:
        w.write(data)
    return url, data, gcs_server.options


def test_every_block_is_read_from_the_first_generation(gs_url, monkeypatch):
    import gcsfs

    url, data, options = gs_url
    media: list[str] = []
    original = gcsfs.GCSFileSystem._call

    async def spy(self, method, path, *args, **kwargs):
        if method == "GET" and "alt=media" in str(path):
            media.append(str(path))
        return await original(self, method, path, *args, **kwargs)

    monkeypatch.setattr(gcsfs.GCSFileSystem, "_call", spy)
    generation = registry.backend("gs", url).filesystem(options["gs"]).info(url[5:])["generation"]
    with storage.open_read(url, options) as f:
        assert f.read() == data
    with storage.open_range(url, BLOCK - 10, BLOCK + 20, options) as f:
        assert f.read() == data[BLOCK - 10:BLOCK + 20]
    assert len(media) == 4 and all(f"generation={generation}" in u for u in media), media


def test_an_object_deleted_during_a_read_fails_as_changed(gs_url):
    url, data, options = gs_url
    with storage.open_read(url, options) as f:
        assert f.read(1000) == data[:1000]
        storage.delete(url, options)
        with pytest.raises(StorageError, match="object changed while it was being read") as info:
            f.read()
    assert info.value.status == 412


def test_gcsfs_give_ups_are_not_printed_as_tracebacks(caplog):
    """gcsfs logs each request it gives up on at ERROR with a traceback (six an ``exists``
    against a stopped endpoint, from the client and every worker); htools retries or
    reports the error itself, in one line.  Other gcsfs records still pass."""
    registry.backend("gs")  # the backend installs the filter
    logger = logging.getLogger("gcsfs")
    with caplog.at_level(logging.DEBUG, logger="gcsfs"):
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except ConnectionRefusedError as e:
            logger.exception(f"_request out of retries on exception: {e}")
            logger.exception(f"_request non-retriable exception: {e}")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
