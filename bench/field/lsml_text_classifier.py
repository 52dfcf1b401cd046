"""The field's tool for "retrain on every annotation": a Label Studio ML backend (``label-studio-ml``).

A text classifier as Label Studio's ML backend examples write one: on each annotation webhook the backend
forks a training job that reads every annotated task of the project from Label Studio's API, fits TF-IDF +
logistic regression and saves it as a new model version; ``/predict`` answers with the newest finished version.

Run by ``bench/loop_latency_field.py`` in its own environment (``make bench-field`` installs it), never by
LoopML itself:

    python bench/field/lsml_text_classifier.py PORT MODEL_DIR LABEL_STUDIO_URL API_KEY
"""

from __future__ import annotations

import os
import pickle
import sys

import requests
from label_studio_ml.api import init_app
from label_studio_ml.model import LabelStudioMLBase
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

LABEL_STUDIO_URL = os.environ.get("LABEL_STUDIO_URL", "")
API_KEY = os.environ.get("LABEL_STUDIO_API_KEY", "")
_loaded: dict[str, object] = {}


class TextClassifier(LabelStudioMLBase):
    """TF-IDF + logistic regression over every annotated task of the project (a full refit per annotation)."""

    def _model(self):
        path = (self.train_output or {}).get("model_file")
        if not path:
            return None
        if path not in _loaded:
            with open(path, "rb") as f:
                _loaded[path] = pickle.load(f)
        return _loaded[path]

    def predict(self, tasks, **kwargs):
        model = self._model()
        version = str((self.train_output or {}).get("version", "none"))
        if model is None:
            return [{"result": [], "score": 0.0, "model_version": version} for _ in tasks]
        texts = [task["data"]["text"] for task in tasks]
        probabilities = model.predict_proba(texts)
        results = []
        for row in probabilities:
            best = int(row.argmax())
            label = str(model.classes_[best])
            results.append(
                {
                    "result": [
                        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}
                    ],
                    "score": float(row[best]),
                    "model_version": version,
                }
            )
        return results

    def fit(self, tasks, workdir=None, **kwargs):
        data = kwargs.get("data") or {}
        project = (data.get("project") or {}).get("id") or (data.get("annotation") or {}).get("project")
        headers = {"Authorization": f"Token {API_KEY}"}
        exported = requests.get(
            f"{LABEL_STUDIO_URL}/api/projects/{project}/export",
            params={"exportType": "JSON", "download_all_tasks": "false"},
            headers=headers,
            timeout=600,
        ).json()
        texts, labels = [], []
        for task in exported:
            for annotation in task.get("annotations", []):
                if annotation.get("was_cancelled"):
                    continue
                for item in annotation.get("result", []):
                    if item.get("type") == "choices":
                        texts.append(task["data"]["text"])
                        labels.append(item["value"]["choices"][0])
        model = make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=1), LogisticRegression(max_iter=1000))
        model.fit(texts, labels)
        path = os.path.join(workdir, "model.pkl")
        with open(path, "wb") as f:
            pickle.dump(model, f)
        return {"model_file": path, "version": kwargs.get("job_id"), "examples": len(texts)}


def main() -> None:
    port, model_dir, url, key = sys.argv[1:5]
    global LABEL_STUDIO_URL, API_KEY
    LABEL_STUDIO_URL, API_KEY = url, key
    os.makedirs(model_dir, exist_ok=True)
    app = init_app(model_class=TextClassifier, model_dir=model_dir, redis_queue="none", redis_host="none")
    app.run(host="127.0.0.1", port=int(port), threaded=True)


if __name__ == "__main__":
    main()
