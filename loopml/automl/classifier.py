"""The deployable model: an embedding head and/or a TF-IDF head, calibration and the label list.

A :class:`TextClassifier` mixes the temperature-calibrated probabilities of its members (weight ``w`` on
the embedding head, ``1 - w`` on the TF-IDF head), then applies a final temperature to the mixture
(``p ** (1 / T)``, renormalised; 1 for a single member). It is saved as a directory:

* ``model.json``: format version, labels, encoder id, candidate, hyper-parameters, weights, temperatures;
* ``head.npz``: the embedding head's arrays (float32; versions saved before it have ``head.pt``, a plain
  ``dict[str, Tensor]`` read with ``weights_only=True``);
* ``tfidf/``: the TF-IDF vocabulary and IDF weights (JSON + ``.npz``) and the Complement NB weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

import numpy as np

from .metrics import softmax
from .text_features import TfidfWords

__all__ = ["EmbeddingHead", "TextClassifier", "TfidfHead"]

FORMAT_VERSION = 1


@dataclass
class EmbeddingHead:
    """A linear or one-hidden-layer MLP head on standardised embeddings ``(x - center) / scale``.

    Its weights are float32 numpy arrays, run with numpy on the CPU: loading and running a version needs no
    torch (its import is seconds of a serving process's start). :meth:`to` ``("cuda")`` makes them torch tensors
    on the GPU, beside a GPU encoder."""

    kind: str  # "linear" | "mlp"
    # center [D]; linear: weight [D, C], bias [C]; mlp: w1 [D, h], b1 [h], w2 [h, C], b2 [C]
    tensors: dict[str, np.ndarray] | dict[str, torch.Tensor]
    scale: float
    temperature: float

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        t = self.tensors
        if isinstance(t["center"], np.ndarray):
            a: dict[str, np.ndarray] = t  # type: ignore[assignment]
            x = (np.asarray(embeddings, dtype=np.float32) - a["center"]) / np.float32(self.scale)
            if self.kind == "linear":
                return (x @ a["weight"] + a["bias"]).astype(np.float64)
            hidden = np.maximum(x @ a["w1"] + a["b1"], 0)
            return (hidden @ a["w2"] + a["b2"]).astype(np.float64)
        import torch

        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(t["center"].device)
        x = (x - t["center"]) / self.scale
        with torch.no_grad():
            if self.kind == "linear":
                out = torch.addmm(t["bias"], x, t["weight"])
            else:
                hidden = torch.relu(torch.addmm(t["b1"], x, t["w1"]))
                out = torch.addmm(t["b2"], hidden, t["w2"])
        return out.cpu().numpy().astype(np.float64)

    def to(self, device: str) -> EmbeddingHead:
        """Move the head's weights to ``device`` (``cuda`` beside a GPU backbone: torch tensors; ``cpu``: numpy
        arrays); answers stay numpy."""
        if device == "cpu":
            self.tensors = {
                k: v if isinstance(v, np.ndarray) else v.detach().cpu().numpy() for k, v in self.tensors.items()
            }
            return self
        import torch

        self.tensors = {
            k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v).to(device) for k, v in self.tensors.items()
        }
        return self

    @property
    def dim(self) -> int:
        return int((self.tensors["weight"] if self.kind == "linear" else self.tensors["w1"]).shape[0])


@dataclass
class TfidfHead:
    """Complement Naive Bayes on word 1-2 gram TF-IDF."""

    vectorizer: TfidfWords
    weights: np.ndarray  # [V, C]
    temperature: float

    def logits(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.vectorizer.transform(texts) @ self.weights, dtype=np.float64)


@dataclass
class TextClassifier:
    """The AutoML winner refit on all data: heads, calibration and labels; see the module docstring."""

    label_set: list[str]
    encoder_id: str | None
    candidate: str
    params: dict[str, Any] = field(default_factory=dict)
    embedding_head: EmbeddingHead | None = None
    tfidf_head: TfidfHead | None = None
    embedding_weight: float = 1.0  # weight of the embedding head's probabilities in the mixture
    temperature: float = 1.0  # final temperature on the mixture

    @property
    def needs_embeddings(self) -> bool:
        return self.embedding_head is not None

    def to(self, device: str) -> TextClassifier:
        """Run the embedding head on ``device`` (the TF-IDF head is sparse CPU work and stays)."""
        if self.embedding_head is not None:
            self.embedding_head.to(device)
        return self

    def predict_proba(self, texts: list[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        """``[n, len(label_set)]`` calibrated probabilities.

        ``embeddings`` (from ``encoder_id``) are computed with the encoder registry when not given and
        the model needs them.
        """
        parts: list[tuple[float, np.ndarray]] = []
        if self.embedding_head is not None:
            emb = self._embeddings(texts, embeddings)
            proba = softmax(self.embedding_head.logits(emb), self.embedding_head.temperature)
            parts.append((self.embedding_weight, proba))
        if self.tfidf_head is not None:
            proba = softmax(self.tfidf_head.logits(list(texts)), self.tfidf_head.temperature)
            parts.append((1.0 - self.embedding_weight if parts else 1.0, proba))
        mixed = sum(w * p for w, p in parts)
        assert isinstance(mixed, np.ndarray)
        return sharpen(mixed, self.temperature)

    def predict(self, texts: list[str], embeddings: np.ndarray | None = None) -> list[str]:
        """The most probable label of each text."""
        return [self.label_set[i] for i in self.predict_proba(texts, embeddings).argmax(axis=1)]

    def _embeddings(self, texts: list[str], embeddings: np.ndarray | None) -> np.ndarray:
        assert self.embedding_head is not None
        if embeddings is None:
            if self.encoder_id is None:
                raise ValueError("this model needs embeddings but has no encoder id")
            from loopml.encoders import get_encoder

            embeddings = get_encoder(self.encoder_id).encode(list(texts))
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_head.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.embedding_head.dim}), got {embeddings.shape}")
        if texts is not None and len(texts) and len(texts) != len(embeddings):
            raise ValueError(f"{len(texts)} texts but {len(embeddings)} embeddings")
        return embeddings

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the model into the directory ``path`` (created if needed)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "label_set": self.label_set,
            "encoder_id": self.encoder_id,
            "candidate": self.candidate,
            "params": self.params,
            "embedding_weight": self.embedding_weight,
            "temperature": self.temperature,
            "embedding_head": None,
            "tfidf_head": None,
        }
        if self.embedding_head is not None:
            head = self.embedding_head
            meta["embedding_head"] = {"kind": head.kind, "scale": head.scale, "temperature": head.temperature}
            arrays = {k: v if isinstance(v, np.ndarray) else v.detach().cpu().numpy() for k, v in head.tensors.items()}
            np.savez(path / "head.npz", **arrays)
        if self.tfidf_head is not None:
            self.tfidf_head.vectorizer.save(path / "tfidf")
            np.save(path / "tfidf" / "cnb_weights.npy", self.tfidf_head.weights)
            meta["tfidf_head"] = {"temperature": self.tfidf_head.temperature}
        (path / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")

    @staticmethod
    def load(path: Path) -> TextClassifier:
        """Read a model written by :meth:`save`."""
        path = Path(path)
        meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported model format {meta.get('format_version')!r} in {path}")
        embedding_head = None
        if meta["embedding_head"] is not None:
            info = meta["embedding_head"]
            tensors = _load_head(path)
            embedding_head = EmbeddingHead(info["kind"], tensors, float(info["scale"]), float(info["temperature"]))
        tfidf_head = None
        if meta["tfidf_head"] is not None:
            weights = np.load(path / "tfidf" / "cnb_weights.npy")
            vectorizer = TfidfWords.load(path / "tfidf")
            tfidf_head = TfidfHead(vectorizer, weights, float(meta["tfidf_head"]["temperature"]))
        return TextClassifier(
            label_set=list(meta["label_set"]),
            encoder_id=meta["encoder_id"],
            candidate=meta["candidate"],
            params=dict(meta["params"]),
            embedding_head=embedding_head,
            tfidf_head=tfidf_head,
            embedding_weight=float(meta["embedding_weight"]),
            temperature=float(meta["temperature"]),
        )


def _load_head(path: Path) -> dict[str, np.ndarray]:
    """The embedding head's float32 arrays: ``head.npz``, or ``head.pt`` of a version saved before it."""
    if (path / "head.npz").exists():
        with np.load(path / "head.npz") as saved:
            return {k: np.ascontiguousarray(saved[k], dtype=np.float32) for k in saved.files}
    import torch

    tensors = torch.load(path / "head.pt", map_location="cpu", weights_only=True)
    return {k: v.numpy().astype(np.float32) for k, v in tensors.items()}


def sharpen(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``proba ** (1 / T)`` renormalised per row (temperature scaling of a probability vector)."""
    if temperature == 1.0:
        return proba / proba.sum(axis=1, keepdims=True)
    return softmax(np.log(np.clip(proba, 1e-300, None)), temperature)
