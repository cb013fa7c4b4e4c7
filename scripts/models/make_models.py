"""Trains the reference sentiment classifier on the demo's review pool and
writes, under models/sentiment/:

- model.onnx: the classifier as ONNX (skl2onnx), input `features`
  (float32, [N, len(vocabulary)]), outputs `label` (int64 class index) and
  `probabilities` (float32, [N, 3]);
- features.json: the featuriser (vocabulary and class names) the Rust side
  reproduces;
- model.joblib: the same scikit-learn model, for MLServer's sklearn runtime.

Everything is deterministic (a fixed vocabulary order, lbfgs, no random
state, a Newton solver that converges tightly, one BLAS thread), so a second run on the same kind of CPU writes the
same bytes. Run through scripts/make-models; `--out DIR` writes elsewhere
(scripts/make-models --check compares).
"""

import csv
import json
import pathlib
import sys

import joblib
import numpy as np
import sklearn
import skl2onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from sentiment_features import featurise, terms  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "models" / "sentiment"
CLASSES = ["positive", "negative", "neutral"]
# A term enters the vocabulary when this many reviews of the pool hold it.
MIN_REVIEWS = 2
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def out_dir():
    if len(sys.argv) == 3 and sys.argv[1] == "--out":
        return pathlib.Path(sys.argv[2])
    if len(sys.argv) != 1:
        sys.exit("usage: make_models.py [--out DIR]")
    return OUT


def read_pool():
    with open(OUT / "reviews.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if rows[0] != ["label", "text"]:
        sys.exit(f"{OUT / 'reviews.tsv'}: expected a `label<TAB>text` header")
    return [text for _, text in rows[1:]], [CLASSES.index(label) for label, _ in rows[1:]]


def main():
    out = out_dir()
    texts, labels = read_pool()
    counts = {}
    for text in texts:
        for term in terms(text):
            counts[term] = counts.get(term, 0) + 1
    vocabulary = sorted(t for t, n in counts.items() if n >= MIN_REVIEWS)
    x = featurise(texts, vocabulary)
    y = np.array(labels, dtype=np.int64)

    model = LogisticRegression(C=10.0, max_iter=1000, solver="newton-cholesky", tol=1e-8)
    model.fit(x, y)
    accuracy = float((model.predict(x) == y).mean())

    onx = convert_sklearn(
        model,
        name="sentiment",
        initial_types=[("features", FloatTensorType([None, len(vocabulary)]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
        final_types=None,
    )
    onx.doc_string = "pipelens sentiment reference classifier (scripts/make-models)"
    (out / "model.onnx").write_bytes(onx.SerializeToString())

    spec = {
        "about": __doc__.split("\n\n")[0].replace("\n", " "),
        "input": "features",
        "outputs": {"label": "label", "probabilities": "probabilities"},
        "classes": CLASSES,
        "terms": "distinct words (runs of alphanumerics and apostrophes, "
        "apostrophes trimmed, lower-cased) and adjacent word pairs joined by "
        "one space; 1.0 where present",
        "vocabulary": vocabulary,
    }
    (out / "features.json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    joblib.dump(model, out / "model.joblib", compress=3)

    print(
        f"trained on {len(texts)} reviews, {len(vocabulary)} terms, "
        f"training accuracy {accuracy:.3f} "
        f"(scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__})"
    )


if __name__ == "__main__":
    main()
