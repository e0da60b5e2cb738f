"""An htmapper script: a half-size thumbnail and the mean colour of every image.

    htmapper -p examples/thumbnails.py 'images-@8.tar' 'thumbs-@8.tar'

Input samples hold ``ppm`` (a binary PPM image) and ``cls``; output samples keep
``cls`` and gain ``thumb.ppm`` and ``mean.json``.  Images too small to shrink
are dropped (``return None``), and counted as dropped in the job summary.
"""

import json

import numpy as np


def init():
    # Runs once per worker process: load a model here for an inference job.
    global SCALE
    SCALE = 2


def decode_ppm(data: bytes) -> np.ndarray:
    magic, dims, maxval, pixels = data.split(b"\n", 3)
    if magic != b"P6":
        raise ValueError(f"not a binary PPM image (magic {magic!r})")
    w, h = map(int, dims.split())
    return np.frombuffer(pixels, dtype=np.uint8, count=w * h * 3).reshape(h, w, 3)


def encode_ppm(image: np.ndarray) -> bytes:
    h, w, _ = image.shape
    return f"P6\n{w} {h}\n255\n".encode() + image.astype(np.uint8).tobytes()


def process_sample(sample):
    image = decode_ppm(sample["ppm"])
    h, w, _ = image.shape
    if h < 2 * SCALE or w < 2 * SCALE:
        return None
    h, w = h - h % SCALE, w - w % SCALE
    small = image[:h, :w].reshape(h // SCALE, SCALE, w // SCALE, SCALE, 3).mean(axis=(1, 3))
    mean = [round(float(x), 2) for x in image.reshape(-1, 3).mean(axis=0)]
    return {
        "__key__": sample["__key__"],
        "cls": sample["cls"],
        "thumb.ppm": encode_ppm(small),
        "mean.json": json.dumps({"rgb": mean}).encode(),
    }
