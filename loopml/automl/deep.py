"""The deep tier of image functions: EfficientNet-Lite0's last blocks fine-tuned with a new head (Lightning).

The AutoML loop trains heads on frozen, pooled backbone features in seconds. With enough labels, adapting the
backbone itself pays: :func:`fit_deep_candidate` fine-tunes the network's last ``train_blocks`` MBConv blocks,
its 1x1 head convolution and a new linear classifier, and judges the result by cross-validation against the
AutoML model's own out-of-fold answers on the same items (:func:`compare_out_of_fold`). It is kept only when it
is better by more than the noise; it trains in its own run (the ``deep_model`` asset), never in the seconds-long
loop.

How it stays affordable on a CPU:

- The frozen part of the network (stem and all but the last blocks) runs once per image and view, under no
  gradient; the feature maps it leaves (7x7 at 224 px) are what the tail trains on, epoch after epoch.
- Augmentation is done on the pixels before that: each image gives ``views`` maps (itself, its mirror image, and
  from the third on random crops of 80-100 % of its side), so the tail sees varied inputs at no cost per epoch.
- Batch-norm statistics stay frozen (few labels make poor batch statistics); their scale and shift train.
- A time budget (``time_budget_s``) caps the folds and the final fit together: each gets an equal share, and
  Lightning's ``max_time`` ends a fit that would overrun it.

A fitted candidate is a :class:`DeepImageClassifier`: a version of its own in the model store holding only the
tail's weights (a few MB; the frozen part is the shared backbone every image function's serving already holds).
It answers like any version: ``predict_proba(images)``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .metrics import softmax

if TYPE_CHECKING:
    from loopml.encoders import EfficientNetLiteEncoder

__all__ = [
    "DeepComparison",
    "DeepConfig",
    "DeepImageClassifier",
    "DeepResult",
    "Tail",
    "compare_out_of_fold",
    "fit_deep_candidate",
    "prefix_maps",
]

DEEP_FORMAT = "deep-image-1"
CANDIDATE = "deep:efficientnet-tail"


@dataclass
class DeepConfig:
    """How the deep candidate trains. ``min_per_class``: labels each class needs before the candidate is tried
    (below it the frozen-feature heads win; bench/image_learning_curve.py measures where it starts to pay)."""

    train_blocks: int = 1
    epochs: int = 25
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    views: int = 3
    folds: int = 3
    time_budget_s: float = 600.0
    min_per_class: int = 32
    seed: int = 0

    @classmethod
    def from_env(cls) -> DeepConfig:
        """``LOOPML_DEEP_TIME_BUDGET_S``, ``LOOPML_DEEP_EPOCHS``, ``LOOPML_DEEP_MIN_PER_CLASS``, else the defaults."""
        from loopml.config import env_int

        config = cls()
        config.epochs = env_int("LOOPML_DEEP_EPOCHS", config.epochs)
        config.min_per_class = env_int("LOOPML_DEEP_MIN_PER_CLASS", config.min_per_class)
        config.time_budget_s = float(env_int("LOOPML_DEEP_TIME_BUDGET_S", int(config.time_budget_s)))
        return config


class Tail(nn.Module):
    """The trainable end of EfficientNet-Lite0: its last ``train_blocks`` blocks (copied), the head convolution
    and batch norm, global average pooling, dropout and a linear classifier."""

    def __init__(self, backbone: nn.Module, train_blocks: int, n_classes: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(list(backbone._blocks)[-train_blocks:]))  # type: ignore[attr-defined]
        self.conv_head = copy.deepcopy(backbone._conv_head)  # type: ignore[attr-defined]
        self.bn = copy.deepcopy(backbone._bn1)  # type: ignore[attr-defined]
        self.act = copy.deepcopy(backbone._swish)  # type: ignore[attr-defined]  # Lite0's: ReLU6
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(int(self.conv_head.out_channels), n_classes)
        self.train_blocks = train_blocks
        self.float()  # a half-precision (GPU) backbone still gives a float32 tail to train

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = maps
        for block in self.blocks:
            x = block(x)
        x = self.act(self.bn(self.conv_head(x)))
        return self.fc(self.dropout(x.mean(dim=(2, 3))))

    def train(self, mode: bool = True) -> Tail:
        super().train(mode)
        for module in self.modules():  # frozen batch statistics; their affine parameters still learn
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters()) + sum(
            b.numel() * b.element_size() for b in self.buffers()
        )


def _frozen_prefix(model: nn.Module, pixels: torch.Tensor, train_blocks: int) -> torch.Tensor:
    """Stem and every block but the last ``train_blocks`` of an EfficientNet-Lite model, as ``extract_features``
    runs them in evaluation (no drop-connect)."""
    x = model._swish(model._bn0(model._conv_stem(pixels)))  # type: ignore[attr-defined]
    blocks = list(model._blocks)  # type: ignore[attr-defined]
    for block in blocks[: len(blocks) - train_blocks]:
        x = block(x)
    return x


def _prefix_on_device(encoder: EfficientNetLiteEncoder, pixels: np.ndarray, train_blocks: int) -> torch.Tensor:
    """The frozen prefix's maps of network inputs ``pixels`` on the encoder's device and precision (call under
    ``torch.inference_mode`` on the torch thread, :func:`loopml.encoders.torch_call`)."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(encoder.device, memory_format=torch.channels_last)
    return _frozen_prefix(encoder._model, tensor.half() if encoder.half else tensor, train_blocks)


def _views(pixels: np.ndarray, views: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``views`` augmented copies of a ``[n, 3, s, s]`` batch: itself, mirrored, then random crops of 80-100 % of
    the side (resized back to ``s``), mirrored at random."""
    out = [pixels]
    if views > 1:
        out.append(pixels[:, :, :, ::-1].copy())
    size = pixels.shape[-1]
    for _ in range(max(0, views - 2)):
        tensor = torch.from_numpy(pixels)
        side = int(size * rng.uniform(0.8, 1.0))
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        crop = tensor[:, :, top : top + side, left : left + side]
        crop = nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
        if rng.random() < 0.5:
            crop = torch.flip(crop, dims=[3])
        out.append(crop.numpy())
    return out


def prefix_maps(
    encoder: EfficientNetLiteEncoder, images: list, train_blocks: int, views: int = 1, seed: int = 0
) -> torch.Tensor:
    """``[views, n, C, h, w]`` feature maps of ``images`` at the frozen part of ``encoder``'s network (the
    shared backbone), on the CPU in float32. View 0 is each image as served."""
    from loopml.encoders import torch_call

    rng = np.random.default_rng(seed)
    batch = 16 if encoder.device == "cpu" else 128
    parts: list[list[torch.Tensor]] = [[] for _ in range(views)]

    def run(pixels: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return _prefix_on_device(encoder, pixels, train_blocks).float().cpu().contiguous()

    for start in range(0, len(images), batch):
        pixels = encoder.pixels(images[start : start + batch])
        for v, view in enumerate(_views(pixels, views, rng)):
            parts[v].append(torch_call(run, view))
    return torch.stack([torch.cat(p) for p in parts])


# --- training ---------------------------------------------------------------------------------------------
def _fit_tail(
    backbone: nn.Module,
    maps: torch.Tensor,
    y: np.ndarray,
    n_classes: int,
    config: DeepConfig,
    seconds: float,
) -> tuple[Tail, int]:
    """Fine-tune a :class:`Tail` on ``maps`` (``[views, n, ...]``) and labels ``y`` with Lightning, for
    ``config.epochs`` epochs or ``seconds``, whichever ends first. Returns the tail and the epochs run."""
    import datetime

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from loopml.automl.heads import _quiet_lightning, quiet_trainer

    torch.manual_seed(config.seed)
    views, n = maps.shape[0], maps.shape[1]
    x = maps.reshape(views * n, *maps.shape[2:])
    labels = torch.from_numpy(np.tile(np.asarray(y, dtype=np.int64), views))
    loader = DataLoader(
        TensorDataset(x, labels),
        batch_size=min(config.batch_size, len(x)),
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    steps = max(1, config.epochs * math.ceil(len(x) / loader.batch_size))  # type: ignore[operator]

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.tail = Tail(backbone, config.train_blocks, n_classes)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
            inputs, targets = batch
            return nn.functional.cross_entropy(self.tail(inputs), targets, label_smoothing=0.05)

        def configure_optimizers(self) -> Any:
            fresh = list(self.tail.fc.parameters())
            tuned = [p for name, p in self.tail.named_parameters() if not name.startswith("fc.")]
            optimizer = torch.optim.AdamW(
                [{"params": tuned, "lr": config.lr / 5}, {"params": fresh, "lr": config.lr}],
                weight_decay=config.weight_decay,
            )
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[config.lr / 5, config.lr], total_steps=steps, pct_start=0.15
            )
            return [optimizer], [{"scheduler": schedule, "interval": "step"}]

    module = Module()
    with _quiet_lightning():
        trainer = quiet_trainer(max_epochs=config.epochs, max_time=datetime.timedelta(seconds=max(1.0, seconds)))
        trainer.fit(module, train_dataloaders=loader)
    tail = module.tail.cpu().eval()
    return tail, int(trainer.current_epoch)


def _logits(tail: Tail, maps: torch.Tensor, batch: int = 256) -> np.ndarray:
    tail.eval()
    with torch.inference_mode():
        return torch.cat([tail(maps[i : i + batch]) for i in range(0, len(maps), batch)]).double().numpy()


def _fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the log-loss of ``softmax(logits / T)`` (grid then refine, in log space)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))

    def nll(t: float) -> float:
        p = softmax(logits, t)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    best = min(grid, key=nll)
    fine = best * np.exp(np.linspace(-0.12, 0.12, 25))
    return float(min(fine, key=nll))


@dataclass
class DeepComparison:
    """The deep candidate against the AutoML model, on the same items' out-of-fold answers."""

    items: int
    deep_accuracy: float
    automl_accuracy: float
    gain: float
    standard_error: float
    better: bool
    reason: str


def compare_out_of_fold(deep_correct: np.ndarray, automl_correct: np.ndarray, z: float = 2.0) -> DeepComparison:
    """Paired comparison of per-item correctness (0/1) on the same items: better when the mean gain exceeds
    ``z`` standard errors of the paired differences (one-sided, about 2.3 % of false alarms at z = 2)."""
    deep = np.asarray(deep_correct, dtype=np.float64)
    automl = np.asarray(automl_correct, dtype=np.float64)
    diff = deep - automl
    n = len(diff)
    gain = float(diff.mean()) if n else 0.0
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    better = n > 1 and gain > 0 and gain > z * se
    verdict = "better" if better else "not better"
    reason = (
        f"deep {deep.mean():.3f} vs AutoML {automl.mean():.3f} out-of-fold on {n} items: gain {gain:+.3f} "
        f"(standard error {se:.3f}); {verdict} by the {z:g}-standard-error rule"
    )
    return DeepComparison(n, float(deep.mean()), float(automl.mean()), gain, se, better, reason)


@dataclass
class DeepResult:
    """A fitted deep candidate with its cross-validated evidence."""

    model: DeepImageClassifier
    oof_proba: np.ndarray  # [n, C], calibrated, rows as the training items
    cv_accuracy: float
    temperature: float
    epochs: list[int]
    seconds: dict[str, float] = field(default_factory=dict)


def fit_deep_candidate(
    encoder: EfficientNetLiteEncoder,
    images: list,
    labels: list[str],
    label_set: list[str],
    config: DeepConfig | None = None,
) -> DeepResult:
    """Cross-validate a fine-tuned tail on ``images`` (data URIs, bytes or PIL images) and ``labels``, calibrate
    it by temperature on its out-of-fold logits, and refit it on all of them (see the module docstring)."""
    from sklearn.model_selection import StratifiedKFold

    config = config or DeepConfig()
    started = time.perf_counter()
    index = {label: i for i, label in enumerate(label_set)}
    y = np.asarray([index[label] for label in labels], dtype=np.int64)
    maps = prefix_maps(encoder, images, config.train_blocks, views=config.views, seed=config.seed)
    seconds = {"prefix": time.perf_counter() - started}
    budget = max(1.0, config.time_budget_s - seconds["prefix"])
    share = budget / (config.folds + 1)
    n_classes = len(label_set)
    folds = min(config.folds, int(np.bincount(y, minlength=n_classes).min()))
    oof_logits = np.zeros((len(y), n_classes))
    epochs: list[int] = []
    if folds >= 2:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        for train_rows, test_rows in splitter.split(np.zeros(len(y)), y):
            tail, ran = _fit_tail(encoder._model, maps[:, train_rows], y[train_rows], n_classes, config, share)
            oof_logits[test_rows] = _logits(tail, maps[0, test_rows])
            epochs.append(ran)
    seconds["cross_validation"] = time.perf_counter() - started - seconds["prefix"]
    temperature = _fit_temperature(oof_logits, y) if folds >= 2 else 1.0
    oof_proba = softmax(oof_logits, temperature)
    tail, ran = _fit_tail(encoder._model, maps, y, n_classes, config, share)
    epochs.append(ran)
    seconds["refit"] = time.perf_counter() - started - seconds["prefix"] - seconds["cross_validation"]
    model = DeepImageClassifier(
        label_set=list(label_set),
        encoder_id=encoder.id,
        tail=tail,
        temperature=temperature,
        params={**asdict(config), "epochs_run": epochs},
    )
    accuracy = float((oof_proba.argmax(axis=1) == y).mean()) if folds >= 2 else float("nan")
    return DeepResult(model, oof_proba, accuracy, temperature, epochs, seconds)


# --- the deployable version -------------------------------------------------------------------------------
@dataclass
class DeepImageClassifier:
    """A fine-tuned tail on the shared EfficientNet-Lite0 backbone of ``encoder_id``: answers images itself
    (it needs no pooled embeddings), calibrated by ``temperature``."""

    label_set: list[str]
    encoder_id: str
    tail: Tail
    temperature: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    candidate: str = CANDIDATE
    embedding_head: None = None  # the version interface of loopml.automl.TextClassifier: no pooled-feature head
    tfidf_head: None = None
    _device: str | None = None

    @property
    def needs_embeddings(self) -> bool:
        return False

    def to(self, device: str) -> DeepImageClassifier:
        """Nothing to do here: the tail follows the shared backbone's device on its first call."""
        return self

    def memory_bytes(self) -> int:
        """What this version adds to a serving process: its tail's weights and buffers."""
        return self.tail.parameter_bytes()

    def _placed(self, encoder: EfficientNetLiteEncoder) -> None:
        if self._device != encoder.device:
            self.tail = self.tail.to(encoder.device, memory_format=torch.channels_last).eval()
            if encoder.half:
                self.tail = self.tail.half()
            self._device = encoder.device

    def predict_proba(self, images: list, embeddings: np.ndarray | None = None) -> np.ndarray:
        """``[n, len(label_set)]`` calibrated probabilities of ``images`` (data URIs, base64, bytes or RGB
        pictures); ``embeddings`` are not used."""
        from loopml.encoders import get_encoder, torch_call

        if not len(images):
            return np.zeros((0, len(self.label_set)))
        encoder = get_encoder(self.encoder_id)
        train_blocks = self.tail.train_blocks

        def run(pixels: np.ndarray) -> np.ndarray:
            self._placed(encoder)  # type: ignore[arg-type]
            with torch.inference_mode():
                maps = _prefix_on_device(encoder, pixels, train_blocks)  # type: ignore[arg-type]
                return self.tail(maps).double().cpu().numpy()

        batch = 16 if encoder.device == "cpu" else 128  # type: ignore[attr-defined]
        logits = np.concatenate(
            [torch_call(run, encoder.pixels(list(images[i : i + batch]))) for i in range(0, len(images), batch)]  # type: ignore[attr-defined]
        )
        return softmax(logits, self.temperature)

    def predict(self, images: list, embeddings: np.ndarray | None = None) -> list[str]:
        return [self.label_set[i] for i in self.predict_proba(images).argmax(axis=1)]

    def save(self, path: Path) -> None:
        """``model.json`` (format, labels, encoder, temperature, parameters) and ``tail.pt`` (a state dict)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().float() for k, v in self.tail.state_dict().items()}, path / "tail.pt")
        meta = {
            "format": DEEP_FORMAT,
            "label_set": self.label_set,
            "encoder_id": self.encoder_id,
            "candidate": self.candidate,
            "temperature": self.temperature,
            "train_blocks": self.tail.train_blocks,
            "params": self.params,
        }
        (path / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @staticmethod
    def load(path: Path) -> DeepImageClassifier:
        """Read a version written by :meth:`save`; the tail's architecture comes from the shared backbone."""
        from loopml.encoders import get_encoder

        path = Path(path)
        meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
        if meta.get("format") != DEEP_FORMAT:
            raise ValueError(f"not a deep image model: {path}")
        encoder = get_encoder(meta["encoder_id"])
        tail = Tail(encoder._model, int(meta["train_blocks"]), len(meta["label_set"]))  # type: ignore[attr-defined]
        tail = tail.float().to(memory_format=torch.channels_last)
        tail.load_state_dict(torch.load(path / "tail.pt", map_location="cpu", weights_only=True))
        return DeepImageClassifier(
            label_set=list(meta["label_set"]),
            encoder_id=meta["encoder_id"],
            tail=tail.eval(),
            temperature=float(meta["temperature"]),
            params=dict(meta["params"]),
            candidate=meta["candidate"],
        )


def is_deep_model(path: Path) -> bool:
    """Whether the model folder ``path`` holds a :class:`DeepImageClassifier`."""
    try:
        return json.loads((Path(path) / "model.json").read_text(encoding="utf-8")).get("format") == DEEP_FORMAT
    except (OSError, ValueError):
        return False
