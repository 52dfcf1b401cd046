"""Many small classification heads on one embedding matrix, trained at once in one Lightning fit.

Cross-validation times hyper-parameters gives dozens of tiny models. Lightning's ``Trainer.fit`` costs tens
of milliseconds per call, so instead of one fit per model, every head lives in one batched
:class:`HeadBank` module: the weights of all linear heads form one ``[D, H*C]`` matrix, those of all MLP
heads one ``[D, M*hidden]`` first layer and an ``[M, hidden, C]`` second layer, so each step is a couple
of large matrix products. A ``[n, heads]`` weight matrix says which rows each head trains on (its fold's
training rows, or all rows for the refit heads; 0 elsewhere) and how much each counts, and a per-head L2
strength carries the hyper-parameter.

* Linear heads (multinomial logistic regression) are convex and trained full-batch with L-BFGS.
* MLP heads (one ReLU hidden layer) are trained with Adam on seeded mini-batches.

The regularisation follows scikit-learn's ``C``: each head minimises its mean training log loss plus
``||W||^2 / (2 C n_train)`` (for two classes the softmax carries both class vectors, so the penalty is
doubled to match a single logistic-regression vector).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from loopml.config import usable_cores

__all__ = ["HeadSpec", "TrainedHeads", "default_threads", "torch_threads", "train_heads"]


@dataclass(frozen=True)
class HeadSpec:
    """One head to train: its kind, its hyper-parameters and the weight of each row in its loss."""

    kind: str  # "linear" or "mlp"
    c: float  # inverse L2 strength, as scikit-learn's C
    row_weights: np.ndarray  # float [n]; 0 for rows the head does not train on
    hidden: int = 0  # MLP hidden units (all MLP heads of one bank share it)


@dataclass
class TrainedHeads:
    """Weights (CPU float32 tensors) and the logits of every head on every row."""

    logits: np.ndarray  # [n, heads, C], heads in the order given to train_heads
    linear: dict[str, torch.Tensor]  # "weight" [L, D, C], "bias" [L, C]
    mlp: dict[str, torch.Tensor]  # "w1" [M, D, h], "b1" [M, h], "w2" [M, h, C], "b2" [M, C]


def _penalty_scale(c: float, n_train: float, n_classes: int) -> float:
    factor = 2.0 if n_classes == 2 else 1.0
    return factor / (2.0 * c * max(n_train, 1.0))


class _LinearHeads(nn.Module):
    """Many linear heads as one matrix: weights ``[D, heads * C]``, biases ``[heads * C]``."""

    def __init__(self, dim: int, n_heads: int, n_classes: int) -> None:
        super().__init__()
        self.n_heads, self.n_classes = n_heads, n_classes
        self.weight = nn.Parameter(torch.zeros(dim, max(n_heads, 1) * n_classes))
        self.bias = nn.Parameter(torch.zeros(max(n_heads, 1) * n_classes))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, heads, C]``."""
        out = torch.addmm(self.bias, x, self.weight)
        return out.view(x.shape[0], -1, self.n_classes)[:, : self.n_heads]

    def squared_norms(self) -> torch.Tensor:
        return self.weight.view(self.weight.shape[0], -1, self.n_classes)[:, : self.n_heads].pow(2).sum(dim=(0, 2))

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[heads, D, C]`` weights and ``[heads, C]`` biases."""
        dim, c = self.weight.shape[0], self.n_classes
        weight = self.weight.view(dim, -1, c)[:, : self.n_heads].permute(1, 0, 2)
        return weight, self.bias.view(-1, c)[: self.n_heads]


class HeadBank(pl.LightningModule):
    """All heads of one AutoML run; ``training_step`` runs the whole optimisation on one full batch.

    All linear heads share one L-BFGS run on the sum of their (independent) objectives. Each evaluation
    costs about one pass over ``x`` whatever the number of heads (the products with a few dozen columns
    are bound by memory), so one joint run beats several smaller ones; warm-starting fold heads from the
    all-rows solution would be faster still but leaks the held-out rows into the CV scores.
    """

    def __init__(
        self,
        dim: int,
        n_classes: int,
        n_linear: int,
        n_mlp: int,
        hidden: int,
        *,
        lbfgs_iterations: int = 50,
        mlp_steps: int = 40,
        mlp_batch: int = 256,
        mlp_lr: float = 1e-2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.n_classes, self.n_mlp, self.hidden = n_classes, n_mlp, hidden
        self.lbfgs_iterations = lbfgs_iterations
        self.mlp_steps, self.mlp_batch, self.mlp_lr, self.seed = mlp_steps, mlp_batch, mlp_lr, seed
        self.linear = _LinearHeads(dim, n_linear, n_classes)
        generator = torch.Generator().manual_seed(seed)
        m, h = max(n_mlp, 1), max(hidden, 1)
        bound1, bound2 = 1.0 / dim**0.5, 1.0 / h**0.5
        self.mlp_w1 = nn.Parameter((torch.rand(dim, m * h, generator=generator) * 2 - 1) * bound1)
        self.mlp_b1 = nn.Parameter(torch.zeros(m * h))
        self.mlp_w2 = nn.Parameter((torch.rand(m, h, n_classes, generator=generator) * 2 - 1) * bound2)
        self.mlp_b2 = nn.Parameter(torch.zeros(m, n_classes))
        self.result_logits: torch.Tensor | None = None

    @property
    def n_linear(self) -> int:
        return self.linear.n_heads

    # --- forward passes -------------------------------------------------------------------------
    def mlp_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, n_mlp, C]`` logits of the MLP heads."""
        hidden = torch.relu(torch.addmm(self.mlp_b1, x, self.mlp_w1)).view(x.shape[0], -1, self.hidden)
        out = torch.einsum("nmh,mhc->nmc", hidden, self.mlp_w2) + self.mlp_b2
        return out[:, : self.n_mlp]

    @staticmethod
    def _head_losses(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Weighted mean cross-entropy of each head over its rows: ``[heads]``."""
        targets = y.view(-1, 1).expand(-1, logits.shape[1])
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return (nll * mask).sum(0) / mask.sum(0).clamp_min(1e-12)

    # --- training -------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lbfgs = torch.optim.LBFGS(
            [self.linear.weight, self.linear.bias],
            lr=1.0,
            max_iter=max(self.lbfgs_iterations, 1),
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-7,
            tolerance_change=1e-10,
        )
        adam = torch.optim.Adam([self.mlp_w1, self.mlp_b1, self.mlp_w2, self.mlp_b2], lr=self.mlp_lr)
        return [lbfgs, adam]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        lbfgs, adam = self.optimizers()  # type: ignore[misc]
        x, y = batch["x"], batch["y"]
        if self.n_linear:
            self._fit_linear(lbfgs, x, y, batch["lin_mask"], batch["lin_penalty"])
        if self.n_mlp:
            self._fit_mlp(adam, x, y, batch["mlp_mask"], batch["mlp_penalty"])
        with torch.no_grad():
            parts = []
            if self.n_linear:
                parts.append(self.linear.logits(x))
            if self.n_mlp:
                parts.append(self.mlp_logits(x))
            self.result_logits = torch.cat(parts, dim=1).detach().cpu()

    def _fit_linear(
        self, optimizer: Any, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, penalty: torch.Tensor
    ) -> None:
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            losses = self._head_losses(self.linear.logits(x), y, mask)
            loss = (losses + penalty * self.linear.squared_norms()).sum()
            self.manual_backward(loss)
            return loss

        optimizer.step(closure=closure)

    def _fit_mlp(
        self, optimizer: Any, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, penalty: torch.Tensor
    ) -> None:
        n = x.shape[0]
        batch = min(n, self.mlp_batch)
        generator = torch.Generator().manual_seed(self.seed + 1)
        order = torch.randperm(n, generator=generator).to(x.device)
        start = 0
        m, h = self.n_mlp, self.hidden
        for _ in range(self.mlp_steps):
            if start + batch > n:
                order = torch.randperm(n, generator=generator).to(x.device)
                start = 0
            rows = order[start : start + batch]
            start += batch
            optimizer.zero_grad()
            losses = self._head_losses(self.mlp_logits(x[rows]), y[rows], mask[rows])
            w1 = self.mlp_w1.view(x.shape[1], -1, h)[:, :m].pow(2).sum(dim=(0, 2))
            w2 = self.mlp_w2[:m].pow(2).sum(dim=(1, 2))
            loss = (losses + penalty * (w1 + w2)).sum()
            self.manual_backward(loss)
            optimizer.step()


def _single_batch_loader(batch: dict[str, torch.Tensor]) -> DataLoader:
    """A DataLoader that yields ``batch`` once (Lightning moves it to the device)."""
    return DataLoader([batch], batch_size=None, shuffle=False, num_workers=0)


def quiet_trainer(**options: Any) -> pl.Trainer:
    """A Lightning ``Trainer`` for LoopML's in-process fits: one device (the GPU when there is one), no logger,
    checkpoints, progress bar, summary or validation; ``options`` add to or override these."""
    settings: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "auto",
        "devices": 1,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    return pl.Trainer(**(settings | options))


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's start-up banner, tips and data-loader advice for one fit."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def default_threads() -> int:
    """Intra-op threads for head training: half the usable cores, at most 4.

    The matrices are small (a few thousand rows), so extra threads gain little, while OpenMP threads that
    wait for a busy core make a step many times slower; on a 2-core machine one thread trains the heads
    while the other core builds the TF-IDF models (see :func:`loopml.automl.search.run_automl`).
    """
    return max(1, min(4, usable_cores() // 2))


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Use ``n`` intra-op threads (default :func:`default_threads`) inside the block, then restore."""
    if n is None:
        n = default_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _mask_and_penalty(specs: list[HeadSpec], n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not specs:
        return torch.zeros(0), torch.zeros(0)
    mask = torch.from_numpy(np.stack([s.row_weights for s in specs], axis=1).astype(np.float32))
    penalty = torch.tensor(
        [_penalty_scale(s.c, float((s.row_weights > 0).sum()), n_classes) for s in specs], dtype=torch.float32
    )
    return mask, penalty


def train_heads(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    specs: list[HeadSpec],
    *,
    seed: int = 0,
    lbfgs_iterations: int = 50,
    mlp_steps: int = 40,
    mlp_batch: int = 256,
    mlp_lr: float = 1e-2,
) -> TrainedHeads:
    """Train all ``specs`` on ``x`` (float32 ``[n, D]``) and labels ``y`` in one ``Trainer.fit``.

    Linear specs must come before MLP specs; all MLP specs must share one hidden size.
    """
    linear = [s for s in specs if s.kind == "linear"]
    mlp = [s for s in specs if s.kind == "mlp"]
    if specs != linear + mlp:
        raise ValueError("linear heads must precede MLP heads")
    hidden = mlp[0].hidden if mlp else 1
    if any(s.hidden != hidden for s in mlp):
        raise ValueError("all MLP heads of one bank must share one hidden size")
    torch.manual_seed(seed)
    bank = HeadBank(
        x.shape[1],
        n_classes,
        len(linear),
        len(mlp),
        hidden,
        lbfgs_iterations=lbfgs_iterations,
        mlp_steps=mlp_steps,
        mlp_batch=mlp_batch,
        mlp_lr=mlp_lr,
        seed=seed,
    )
    lin_mask, lin_penalty = _mask_and_penalty(linear, n_classes)
    mlp_mask, mlp_penalty = _mask_and_penalty(mlp, n_classes)
    batch = {
        "x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        "y": torch.from_numpy(np.asarray(y, dtype=np.int64)),
        "lin_mask": lin_mask,
        "lin_penalty": lin_penalty,
        "mlp_mask": mlp_mask,
        "mlp_penalty": mlp_penalty,
    }
    with _quiet_lightning():
        quiet_trainer(max_epochs=1).fit(bank, train_dataloaders=_single_batch_loader(batch))
    return _collect(bank)


def _collect(bank: HeadBank) -> TrainedHeads:
    """Copy the trained weights and the final logits to CPU."""
    with torch.no_grad():
        weight, bias = bank.linear.stacked()
        dim, h, m = bank.mlp_w1.shape[0], bank.hidden, bank.n_mlp
        w1 = bank.mlp_w1.detach().cpu().view(dim, -1, h)[:, :m].permute(1, 0, 2)
        b1 = bank.mlp_b1.detach().cpu().view(-1, h)[:m]
        w2 = bank.mlp_w2.detach().cpu()[:m]
        b2 = bank.mlp_b2.detach().cpu()[:m]
    assert bank.result_logits is not None, "the training step did not run"
    return TrainedHeads(
        logits=bank.result_logits.numpy().astype(np.float64),
        linear={"weight": weight.detach().cpu().contiguous(), "bias": bias.detach().cpu().contiguous()},
        mlp={"w1": w1.contiguous(), "b1": b1.contiguous(), "w2": w2.contiguous(), "b2": b2.contiguous()},
    )
