"""A look at a few samples of a shard set, on the client (no cluster, no job).

:func:`head` reads the first ``n`` samples, opening shards in order and only as many as
it needs (it stops reading mid-shard); :func:`sample` takes ``n`` samples at random from
a few shards chosen at random (a reservoir over them), reproducibly with ``seed``.

Both return :class:`Samples`: a ``list`` of sample dicts (``__key__``, ``__url__`` and
``bytes`` fields, as a ``process_sample`` script sees them) that Jupyter shows as a table
(one row per sample; images as small thumbnails, text and JSON as text, other bytes as
their size) and that prints as a plain text table elsewhere.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import random
from collections.abc import Iterator

from htools import shards, storage, tar
from htools.errors import hide_credentials
from htools.naming import CONTROL_CHARS, TEXT_FIELDS
from htools.summary import format_bytes

#: Field extensions shown as images: those a browser shows as they are ...
BROWSER_IMAGES = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "gif": "gif"}
#: ... and those converted to PNG first (with Pillow, when it is installed).
CONVERTED_IMAGES = {"ppm", "pgm", "pbm", "pnm", "bmp", "tif", "tiff"}
THUMBNAIL = 64  # pixels: the longest side of a thumbnail in the table
EMBED_BYTES = 32_000  # images bigger than this are shrunk (with Pillow) before embedding
TEXT_HTML = 200  # characters of a text field shown in the table
TEXT_PLAIN = 40  # ... and in the plain text table


def head(pattern, n: int = 8, fields=None, *, storage_options=None) -> Samples:
    """The first ``n`` samples of the shard set ``pattern`` (a pattern, or a list of them),
    read on the client.  Shards are opened in order and only while samples are missing:
    ``head("data-@1000.tar", 5)`` reads the start of the first shard only.

    ``fields`` (names, or a comma-separated string) keeps only those fields of each sample
    (``__key__`` and ``__url__`` are always kept).
    """
    wanted = _fields(fields)
    found = Samples()
    if n <= 0:
        return found
    options = storage.resolve_options(storage_options)
    for url in shards.expand_all(pattern, storage_options):
        with contextlib.closing(_read(url, options)) as samples:
            for s in samples:
                found.append(_select(s, wanted))
                if len(found) >= n:
                    return found
    return found


def sample(pattern, n: int = 8, seed=None, fields=None, *, shards_read: int = 3,
           storage_options=None) -> Samples:
    """``n`` random samples of the shard set ``pattern``: ``shards_read`` shards chosen at
    random are read whole, and a reservoir keeps ``n`` of their samples, each equally
    likely.  The same ``seed`` gives the same samples (of the same shards)."""
    wanted = _fields(fields)
    rng = random.Random(seed)
    urls = shards.expand_all(pattern, storage_options)
    chosen = sorted(rng.sample(range(len(urls)), min(max(shards_read, 1), len(urls))))
    options = storage.resolve_options(storage_options)
    kept: list[tuple[int, dict]] = []
    if n <= 0:
        return Samples()
    seen = 0
    for i in chosen:
        for s in _read(urls[i], options):
            if len(kept) < n:
                kept.append((seen, _select(s, wanted)))
            else:
                j = rng.randrange(seen + 1)
                if j < n:
                    kept[j] = (seen, _select(s, wanted))
            seen += 1
    return Samples(s for _pos, s in sorted(kept, key=lambda t: t[0]))


def _fields(fields) -> list[str] | None:
    if fields is None:
        return None
    if isinstance(fields, str):
        fields = fields.split(",")
    return [f for f in fields if f]


def _select(s: dict, wanted: list[str] | None) -> dict:
    if wanted is None:
        return s
    return {k: v for k, v in s.items() if k in ("__key__", "__url__") or k in wanted}


def _read(url: str, options: dict) -> Iterator[dict]:
    """The samples of one shard (close the generator to stop reading early)."""
    with storage.open_read(url, options) as raw:
        yield from tar.read_samples(tar.open_stream_reader(raw, url), url)


# --------------------------------------------------------------------- display --

class Samples(list):
    """A list of samples whose notebook display is a table (``_repr_html_``) and whose
    ``str()``/``repr()`` is a plain text table."""

    def __getitem__(self, i):
        got = super().__getitem__(i)
        return Samples(got) if isinstance(i, slice) else got

    def columns(self) -> list[str]:
        """``__key__``, then every field in the order first seen (``__url__`` apart)."""
        names: dict[str, None] = {"__key__": None}
        for s in self:
            for k in s:
                if k not in ("__key__", "__url__"):
                    names.setdefault(k, None)
        return list(names)

    def _repr_html_(self) -> str:
        if not self:
            return "<p><i>no samples</i></p>"
        cols = self.columns()
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in cols)
        body = []
        for s in self:
            url = hide_credentials(str(s.get("__url__", "")))
            cells = []
            for c in cols:
                if c == "__key__":
                    cells.append(f"<td style='text-align:left;vertical-align:top' "
                                 f"title='{html.escape(url, True)}'>"
                                 f"<code>{html.escape(str(s.get('__key__', '')))}</code></td>")
                else:
                    cells.append(f"<td style='text-align:left;vertical-align:top'>"
                                 f"{_cell_html(c, s.get(c))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        shards_seen = len({s.get("__url__") for s in self})
        caption = (f"{len(self)} sample{'s' if len(self) != 1 else ''} from "
                   f"{shards_seen} shard{'s' if shards_seen != 1 else ''}")
        return (f"<table class='htools-samples'><caption style='text-align:left'>"
                f"{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>")

    def __str__(self) -> str:
        if not self:
            return "(no samples)"
        cols = self.columns()
        grid = [cols] + [[_cell_text(c, s.get(c)) for c in cols] for s in self]
        widths = [max(len(row[i]) for row in grid) for i in range(len(cols))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in grid]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    __repr__ = __str__


def _ext(field: str) -> str:
    return field.rsplit(".", 1)[-1].lower()


def _text(field: str, value) -> str | None:
    """The value as text if it is text (a text field by name, or printable UTF-8), else None."""
    if isinstance(value, str):
        return value
    try:
        text = bytes(value).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        return None
    if _ext(field) in TEXT_FIELDS or not CONTROL_CHARS.intersection(text):
        if _ext(field) in ("json", "jsn"):
            try:  # compact, one line
                return json.dumps(json.loads(text), ensure_ascii=False)
            except ValueError:
                pass
        return text
    return None


def _cut(text: str, limit: int) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _cell_text(field: str, value) -> str:
    if value is None:
        return ""
    if field == "__key__":
        return str(value)
    if _ext(field) in BROWSER_IMAGES or _ext(field) in CONVERTED_IMAGES:
        return f"<{_ext(field)} {format_bytes(len(value))}>"
    text = _text(field, value)
    if text is not None:
        return _cut(text, TEXT_PLAIN)
    return f"<{format_bytes(len(value))}>"


def _cell_html(field: str, value) -> str:
    if value is None:
        return ""
    ext = _ext(field)
    if ext in BROWSER_IMAGES or ext in CONVERTED_IMAGES:
        img = _thumbnail(ext, bytes(value))
        size = f"<br><small>{html.escape(format_bytes(len(value)))}</small>"
        if img is None:
            return f"<i>{html.escape(ext)}</i>{size}"
        mime, data = img
        return (f"<img src='data:image/{mime};base64,{base64.b64encode(data).decode('ascii')}' "
                f"style='width:{THUMBNAIL}px;height:auto;max-height:{THUMBNAIL}px;"
                f"object-fit:contain;image-rendering:pixelated' alt='{html.escape(field, True)}'>"
                f"{size}")
    text = _text(field, value)
    if text is not None:
        return f"<span style='white-space:pre-wrap'>{html.escape(_cut(text, TEXT_HTML))}</span>"
    return f"<i>{html.escape(format_bytes(len(value)))}</i>"


def _thumbnail(ext: str, data: bytes) -> tuple[str, bytes] | None:
    """(mime subtype, bytes) of an image a browser can show, small enough to embed;
    None when it cannot be shown (a PPM without Pillow, or an image Pillow cannot read)."""
    if ext in BROWSER_IMAGES and len(data) <= EMBED_BYTES:
        return BROWSER_IMAGES[ext], data
    try:
        from PIL import Image
    except ImportError:
        return (BROWSER_IMAGES[ext], data) if ext in BROWSER_IMAGES else None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if max(im.size) > 2 * THUMBNAIL:
                im.thumbnail((2 * THUMBNAIL, 2 * THUMBNAIL))
            if im.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                im = im.convert("RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return "png", buf.getvalue()
    except Exception:  # noqa: BLE001 - not an image after all: show its size
        return None
