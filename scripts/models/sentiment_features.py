"""The sentiment featuriser, as the Rust side reproduces it exactly.

A text becomes a float vector over a fixed vocabulary of words and word
pairs: 1.0 where the term occurs in the text, 0.0 elsewhere. Words are the
runs of alphanumeric characters and apostrophes, apostrophes trimmed from
both ends, lower-cased (the demo's `tokenize`); word pairs are two adjacent
words joined by one space. `models/sentiment/features.json` holds the
vocabulary in column order.
"""

import json


def tokenize(text):
    """The words of `text`, as the demo's `classify::tokenize` makes them."""
    words, current = [], []
    for ch in text:
        if ch.isalnum() or ch == "'":
            current.append(ch)
        else:
            words.append("".join(current))
            current = []
    words.append("".join(current))
    out = []
    for word in words:
        word = word.strip("'").lower()
        if word:
            out.append(word)
    return out


def terms(text):
    """The distinct terms (words and adjacent word pairs) of `text`."""
    words = tokenize(text)
    found = set(words)
    found.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    return found


def featurise(texts, vocabulary):
    """One row of 0.0/1.0 per text over `vocabulary` (a list of terms)."""
    import numpy as np

    column = {term: i for i, term in enumerate(vocabulary)}
    rows = np.zeros((len(texts), len(vocabulary)), dtype=np.float32)
    for r, text in enumerate(texts):
        for term in terms(text):
            c = column.get(term)
            if c is not None:
                rows[r, c] = 1.0
    return rows


def load_spec(path):
    """The featuriser file written beside the model."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
