"""The reference answers for the tests: reads a JSON list of texts on stdin,
featurises them with sentiment_features.py and prints, as JSON, the class
index and probabilities that onnxruntime gives for models/sentiment/model.onnx
(`onnx`) or that scikit-learn's predict_proba gives for model.joblib
(`sklearn`)."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from sentiment_features import featurise, load_spec  # noqa: E402

MODELS = pathlib.Path(__file__).resolve().parents[2] / "models" / "sentiment"


def main():
    runtime = sys.argv[1] if len(sys.argv) > 1 else "onnx"
    texts = json.load(sys.stdin)
    spec = load_spec(MODELS / "features.json")
    x = featurise(texts, spec["vocabulary"])
    if runtime == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(MODELS / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        label, probabilities = session.run(
            [spec["outputs"]["label"], spec["outputs"]["probabilities"]], {spec["input"]: x}
        )
    elif runtime == "sklearn":
        import joblib

        model = joblib.load(MODELS / "model.joblib")
        probabilities = model.predict_proba(x)
        label = model.predict(x)
    else:
        sys.exit(f"unknown runtime {runtime!r}: onnx or sklearn")
    json.dump(
        {"label": [int(v) for v in label], "probabilities": [[float(p) for p in row] for row in probabilities]},
        sys.stdout,
    )


if __name__ == "__main__":
    main()
