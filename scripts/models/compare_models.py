"""Compares two model directories that scripts/make-models wrote: the
probabilities their model.onnx give (onnxruntime) on the review pool, and
their features.json. Exits 1 when they differ by more than 1e-6."""

import json
import pathlib
import sys

import numpy as np
import onnxruntime

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from sentiment_features import featurise, load_spec  # noqa: E402

POOL = pathlib.Path(__file__).resolve().parents[2] / "models" / "sentiment" / "reviews.tsv"


def probabilities(directory, texts):
    spec = load_spec(directory / "features.json")
    session = onnxruntime.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run([spec["outputs"]["probabilities"]], {spec["input"]: featurise(texts, spec["vocabulary"])})[0]


def main():
    a, b = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    if json.loads((a / "features.json").read_text()) != json.loads((b / "features.json").read_text()):
        sys.exit("features.json differs")
    texts = [line.split("\t", 1)[1] for line in POOL.read_text(encoding="utf-8").splitlines()[1:]]
    diff = float(np.abs(probabilities(a, texts) - probabilities(b, texts)).max())
    print(f"largest probability difference on the pool: {diff:.2e}")
    sys.exit(0 if diff <= 1e-6 else 1)


if __name__ == "__main__":
    main()
