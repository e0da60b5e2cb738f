"""An htmapper script that runs a (toy) model in batches: an image embedding and a score.

    htmapper -p examples/embed.py --batch-size 64 --prepare-threads 2 \\
        'images-@8.tar' 'emb-@8.tar'
    htextract -f __key__,emb.npy --format parquet -o emb.parquet 'emb-@8.tar'

``init()`` loads the weights once per worker process from ``embed_weights.npz``
(made by ``make_embed_weights.py``): from ``$EMBED_WEIGHTS`` (a path or any URL htools
reads: ``s3://``, ``gs://``, ``http://``) when set, else from beside this script in an
htools checkout.  ``prepare_sample`` decodes the image (the first of jpg, png, ppm ...)
with Pillow and resizes it, on ``--prepare-threads`` threads ahead of the model;
``process_batch`` projects a whole batch of pixels at once (one matrix product, where a
real model would run on a GPU) and writes, per sample, ``emb.npy`` (a float32 vector
of unit length), ``score.json`` and the input's ``cls`` when it has one.  An image
Pillow cannot read is that sample's error (``--max-errors``).
"""

import io
import json
import os

import numpy as np
from PIL import Image

IMAGE_FIELDS = ("jpg", "jpeg", "png", "ppm", "webp")


def _weights_bytes() -> bytes:
    url = os.environ.get("EMBED_WEIGHTS")
    if url:
        from htools import storage

        with storage.open_read(url) as f:
            return f.read()
    import htools  # an htools checkout: examples/ beside the package

    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(htools.__file__))),
                        "examples", "embed_weights.npz")
    with open(here, "rb") as f:
        return f.read()


def init():
    global PROJECTION, PROBE, MEAN, SIZE
    w = np.load(io.BytesIO(_weights_bytes()))
    PROJECTION, PROBE, MEAN = w["projection"], w["probe"], w["mean"]
    SIZE = int(w["size"])


def prepare_sample(sample):
    field = next((f for f in IMAGE_FIELDS if f in sample), None)
    if field is None:
        return None  # no image: dropped
    with Image.open(io.BytesIO(sample[field])) as image:
        image.draft("RGB", (SIZE, SIZE))  # a JPEG decodes at 1/2 .. 1/8 scale: faster
        image = image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32).reshape(-1) / 255.0
    return {"__key__": sample["__key__"], "cls": sample.get("cls"), "pixels": pixels}


def process_batch(samples):
    x = np.stack([s["pixels"] for s in samples]) - MEAN  # (batch, SIZE*SIZE*3)
    emb = x @ PROJECTION  # (batch, DIM): the whole batch in one call
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    scores = 1.0 / (1.0 + np.exp(-4.0 * (emb @ PROBE)))
    out = []
    for s, e, score in zip(samples, emb.astype(np.float32), scores):
        buf = io.BytesIO()
        np.save(buf, e)
        sample = {"__key__": s["__key__"], "emb.npy": buf.getvalue(),
                  "score.json": json.dumps({"score": round(float(score), 6)}).encode()}
        if s["cls"] is not None:
            sample["cls"] = s["cls"]
        out.append(sample)
    return out
