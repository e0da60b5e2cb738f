"""Make a small image-classification dataset as a directory tree.

    python examples/make_images.py DIR [--classes 5] [--per-class 40] [--size 32]

Writes DIR/<class>/<id>.ppm (a colour image, binary PPM) and DIR/<class>/<id>.cls
(the class index as text): the layout many vision datasets ship in.  Each class
has its own mean colour, so a script can tell them apart.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def ppm(image: np.ndarray) -> bytes:
    h, w, _ = image.shape
    return f"P6\n{w} {h}\n255\n".encode() + image.astype(np.uint8).tobytes()


def make(root: str, classes: int = 5, per_class: int = 40, size: int = 32, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    n = 0
    for c in range(classes):
        folder = os.path.join(root, f"class{c}")
        os.makedirs(folder, exist_ok=True)
        base = np.array([40 + 40 * c, 200 - 30 * c, 90 + 25 * (c % 3)])
        for i in range(per_class):
            noise = rng.normal(0, 25, size=(size, size, 3))
            img = np.clip(base + noise, 0, 255)
            stem = os.path.join(folder, f"img{c:02d}{i:05d}")
            with open(stem + ".ppm", "wb") as f:
                f.write(ppm(img))
            with open(stem + ".cls", "w") as f:
                f.write(str(c))
            n += 1
    return n


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    print(f"{make(a.root, a.classes, a.per_class, a.size)} images in {a.root}")
