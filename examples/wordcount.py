"""An htsort script: count the words of a dataset (the classic reduce).

    htsort 'words-@100.tar' 'counts-@10.tar' -p examples/wordcount.py

Input samples hold ``txt`` (any text); each is split into lowercase words.  The
output has one sample per distinct word, in word order: its key is the word and its
``count`` field the number of times it appears.  ``process_sample`` turns a sample
into one sample per word, ``sort_key`` sorts them by word, and ``reduce_samples``
gets every sample of one word at once, across all input shards.
"""

import re

WORD = re.compile(r"[^\W_]+")


def process_sample(sample):
    words = WORD.findall(sample["txt"].decode("utf-8", "replace").lower())
    return [{"__key__": f"{sample['__key__']}/{i}", "word": w.encode(), "n": b"1"}
            for i, w in enumerate(words)]


def sort_key(sample):
    return sample["word"].decode()


def reduce_samples(key, samples):
    total = sum(int(s.get("n", b"1")) for s in samples)
    return {"__key__": key, "count": str(total).encode()}
