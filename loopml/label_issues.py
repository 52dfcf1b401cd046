"""Find labelled items whose annotation is probably wrong, from a model's out-of-fold probabilities.

Every item is ranked by ``score = 1 - given_label_proba``: the probability mass the model puts on labels other
than the annotated one (for calibrated probabilities, the model's estimate that the annotation is wrong; its
self-confidence ranking, as in cleanlab's ``Datalab``). Higher is more suspect; ``rank`` 1 is the most suspect
item, and ties keep the input order.

How many items are returned is estimated by two detectors, both on calibrated out-of-fold probabilities (each
item scored by a model that never saw it):

* ``confident_learning``: cleanlab's confident learning (:func:`cleanlab.filter.find_label_issues`, its default
  ``prune_by_noise_rate``): per-class confidence thresholds estimate the joint distribution of given and true
  labels, and the items most likely to sit in its off-diagonal cells are flagged;
* ``confident_disagreement``: the model's top label is not the given one and its probability is at least
  ``disagreement_confidence``, whether or not confident learning flagged the item.

If they flag m items between them, the m items at the top of the ranking are returned: the detectors estimate
how many annotations are wrong, the ranking picks which. A flip whose given label gets almost nothing while the
rest is spread over several other labels (none of them confident enough for either detector) is thus still
returned ahead of a correct item with a middling probability that a detector happened to flag.

Each returned item carries the detectors that flagged it as its ``reason``: ``confident_learning``,
``confident_disagreement``, or ``confident_learning+confident_disagreement`` for both; an item that neither
flagged, returned for its rank alone, has the reason ``low_given_label_proba``. A flagged item that is not among
the top m is not returned.

The out-of-fold probabilities of a model version are saved as ``oof_proba.parquet`` (columns ``content_hash``,
``label`` and ``p_<label>`` per label in label-set order); :func:`read_oof` reads that file back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

CONFIDENT_LEARNING = "confident_learning"
CONFIDENT_DISAGREEMENT = "confident_disagreement"
BOTH = f"{CONFIDENT_LEARNING}+{CONFIDENT_DISAGREEMENT}"
LOW_GIVEN_PROBA = "low_given_label_proba"  # neither detector flagged it: returned for its rank alone
REASONS: tuple[str, ...] = (CONFIDENT_LEARNING, CONFIDENT_DISAGREEMENT, BOTH, LOW_GIVEN_PROBA)

PROBA_PREFIX = "p_"
ID_COLUMNS: tuple[str, ...] = ("item_id", "content_hash")

SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int64(),
    "item_id": pl.String(),
    "given_label": pl.String(),
    "suggested_label": pl.String(),
    "given_label_proba": pl.Float64(),
    "suggested_proba": pl.Float64(),
    "reason": pl.String(),
    "score": pl.Float64(),
}


def find_label_issues(
    item_ids: Sequence[str],
    given_labels: Sequence[str],
    label_set: Sequence[str],
    oof_proba: np.ndarray,
    *,
    disagreement_confidence: float = 0.9,
    max_items: int | None = None,
) -> pl.DataFrame:
    """The items whose given label is most suspect, most suspect first.

    ``oof_proba[i, j]`` is the calibrated out-of-fold probability that item ``item_ids[i]`` has label
    ``label_set[j]`` (as in ``AutoMLResult.oof_proba``); ``given_labels[i]`` is its annotation. Confident
    learning and confident disagreement (top probability >= ``disagreement_confidence`` on another label) flag
    items; their number m, the items flagged by either, is how many are returned: the m items with the lowest
    probability of their given label (highest ``score = 1 - given_label_proba``; ties in input order), whether
    flagged or not. ``reason`` names the detectors that flagged the item, or ``low_given_label_proba`` when it is
    returned for its rank alone (see the module docstring). ``suggested_label`` is the most probable label other
    than the given one. At most ``max_items`` rows are returned (the first ones; all m when None).

    Returns a frame with the columns of :data:`SCHEMA`; it is empty when nothing is flagged, when there are no
    items, or when fewer than two distinct labels were given (out-of-fold probabilities then carry no evidence
    against the annotations). Raises :class:`ValueError` for mismatched lengths or shapes, unknown or duplicate
    labels, probabilities that are not finite, outside [0, 1] or whose rows do not sum to 1, and out-of-range
    arguments.
    """
    proba, given = _check_inputs(item_ids, given_labels, label_set, oof_proba, disagreement_confidence, max_items)
    n = len(given)
    if n == 0 or len(label_set) < 2 or len(np.unique(given)) < 2:
        return empty_issues()

    rows = np.arange(n)
    given_proba = proba[rows, given]
    others = proba.copy()
    others[rows, given] = -np.inf
    suggested = others.argmax(axis=1)
    suggested_proba = proba[rows, suggested]

    by_cl = np.zeros(n, dtype=bool)
    by_cl[_confident_learning(given, proba)] = True
    by_disagreement = (proba.max(axis=1) >= disagreement_confidence) & (proba.argmax(axis=1) != given)

    n_issues = int((by_cl | by_disagreement).sum())  # how many: the detectors' estimate
    ranked = np.lexsort((rows, given_proba))  # which: every item, most suspect first; ties keep input order
    chosen = ranked[: n_issues if max_items is None else min(n_issues, max_items)]

    reasons = np.select(
        [by_cl[chosen] & by_disagreement[chosen], by_cl[chosen], by_disagreement[chosen]],
        [BOTH, CONFIDENT_LEARNING, CONFIDENT_DISAGREEMENT],
        default=LOW_GIVEN_PROBA,
    )
    labels = list(label_set)
    return pl.DataFrame(
        {
            "rank": np.arange(1, len(chosen) + 1, dtype=np.int64),
            "item_id": [str(item_ids[i]) for i in chosen],
            "given_label": [labels[given[i]] for i in chosen],
            "suggested_label": [labels[suggested[i]] for i in chosen],
            "given_label_proba": given_proba[chosen],
            "suggested_proba": suggested_proba[chosen],
            "reason": reasons.tolist(),
            "score": 1.0 - given_proba[chosen],  # higher = more suspect (see the module docstring)
        },
        schema=SCHEMA,
    )


def empty_issues() -> pl.DataFrame:
    """An issues frame with no rows (the schema of :func:`find_label_issues`)."""
    return pl.DataFrame(schema=SCHEMA)


def summarize(issues: pl.DataFrame, n_items: int) -> dict[str, Any]:
    """Counts for metadata: items inspected, items returned as issues (``n_flagged``), their share and the count
    per reason (every reason of :data:`REASONS`, 0 when absent)."""
    if n_items < 0 or n_items < issues.height:
        raise ValueError(f"n_items ({n_items}) must be at least the number of issues ({issues.height})")
    counts = dict.fromkeys(REASONS, 0)
    for reason, count in issues["reason"].value_counts().iter_rows():
        counts[reason] = int(count)
    return {
        "n_items": n_items,
        "n_flagged": issues.height,
        "share_flagged": round(issues.height / n_items, 4) if n_items else 0.0,
        **counts,
    }


def read_oof(path: str | Path) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """Read a model version's ``oof_proba.parquet``: ``(item ids, given labels, label set, [n, C] proba)``.

    The item id is the ``item_id`` column, or ``content_hash`` when there is none; the label set is the
    ``p_<label>`` columns in file order.
    """
    frame = pl.read_parquet(path)
    id_column = next((c for c in ID_COLUMNS if c in frame.columns), None)
    if id_column is None or "label" not in frame.columns:
        raise ValueError(f"{path}: expected an id column ({' or '.join(ID_COLUMNS)}) and a 'label' column")
    proba_columns = [c for c in frame.columns if c.startswith(PROBA_PREFIX)]
    label_set = [c[len(PROBA_PREFIX) :] for c in proba_columns]
    proba = frame.select(proba_columns).to_numpy().astype(np.float64) if proba_columns else np.zeros((frame.height, 0))
    ids = [str(v) for v in frame[id_column].to_list()]
    return ids, frame["label"].cast(pl.String).to_list(), label_set, proba


def _confident_learning(given: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Indices that cleanlab's confident learning flags (ranked by self-confidence, lowest first)."""
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "too few examples in class k": expected for small or absent classes
        return np.asarray(
            cleanlab_find_label_issues(given, proba, return_indices_ranked_by="self_confidence", n_jobs=1),
            dtype=np.int64,
        )


def _check_inputs(
    item_ids: Sequence[str],
    given_labels: Sequence[str],
    label_set: Sequence[str],
    oof_proba: np.ndarray,
    disagreement_confidence: float,
    max_items: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the arguments; return the probabilities as float64 and the given labels as class indices."""
    if not 0.0 < disagreement_confidence <= 1.0:
        raise ValueError(f"disagreement_confidence must be in (0, 1], got {disagreement_confidence}")
    if max_items is not None and max_items < 0:
        raise ValueError(f"max_items must be None or >= 0, got {max_items}")
    if len(item_ids) != len(given_labels):
        raise ValueError(f"{len(item_ids)} item ids but {len(given_labels)} given labels")
    index = {label: j for j, label in enumerate(label_set)}
    if len(index) != len(label_set):
        raise ValueError(f"label_set has duplicate labels: {list(label_set)}")
    proba = np.asarray(oof_proba, dtype=np.float64)
    expected = (len(given_labels), len(label_set))
    if proba.ndim != 2 or proba.shape != expected:
        raise ValueError(f"oof_proba must have shape [items, labels] = {list(expected)}, got {list(proba.shape)}")
    unknown = sorted({str(label) for label in given_labels if label not in index})
    if unknown:
        raise ValueError(f"given labels not in label_set {list(label_set)}: {unknown[:5]}")
    if proba.size:
        if not np.isfinite(proba).all() or proba.min() < 0.0 or proba.max() > 1.0:
            raise ValueError("oof_proba must hold finite probabilities in [0, 1]")
        sums = proba.sum(axis=1)
        if not np.allclose(sums, 1.0, atol=1e-3):
            worst = int(np.abs(sums - 1.0).argmax())
            raise ValueError(f"oof_proba rows must sum to 1 (row {worst} sums to {sums[worst]:.6f})")
    given = np.fromiter((index[label] for label in given_labels), dtype=np.int64, count=len(given_labels))
    return proba, given
