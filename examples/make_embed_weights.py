"""Make examples/embed_weights.npz, the weights of the toy model in examples/embed.py.

    python examples/make_embed_weights.py [OUT.npz] [--seed 0]

A fixed random projection of a 16x16 RGB image (768 values) to a 32-dimensional
embedding, and a probe vector that turns an embedding into a score: 98 KB, the same
bytes for the same seed (the file is committed; this script says how it was made).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

SIZE = 16  # images are resized to SIZE x SIZE before the projection
DIM = 32  # embedding dimensions


def make(path: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((SIZE * SIZE * 3, DIM)).astype(np.float32)
    projection /= np.sqrt(SIZE * SIZE * 3)
    probe = rng.standard_normal(DIM).astype(np.float32)
    probe /= np.linalg.norm(probe)
    mean = np.full(SIZE * SIZE * 3, 0.5, np.float32)  # pixels are centred before projecting
    np.savez(path, projection=projection, probe=probe, mean=mean,
             size=np.int64(SIZE))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=os.path.join(os.path.dirname(__file__),
                                                           "embed_weights.npz"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    make(a.out, a.seed)
    print(f"{a.out}: {os.path.getsize(a.out)} bytes")
