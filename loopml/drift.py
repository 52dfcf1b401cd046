"""Drift reports per function: has the world moved away from what the model was trained on?

:func:`build_drift_report` compares a *reference* (the training data: embeddings, the model's labels, e.g.
out-of-fold predictions, and their confidences, texts) with a *current* window (recent invocations: their
embeddings, answered labels, confidences, texts) and saves an Evidently HTML report next to a small
:class:`DriftSummary` of key figures for Dagster metadata and sensors.

- **Inputs** (embeddings): a PCA fitted on the reference reduces them to a few components; Evidently tests
  each component for drift (``DriftedColumnsCount``); the input has drifted when at least
  ``input_drift_share`` of the components have. (Per-component tests take milliseconds; whole-embedding
  methods take far longer on hundreds of dimensions.)
- **Outputs**: drift of the label distribution (categorical) and of the confidence distribution.
- **Input quality**: for texts, mean text length and word count, shares of empty, duplicated and non-ASCII
  texts: as key figures over all rows, and in the report as per-row figures of the sampled rows (Evidently
  ``MeanValue``, reference beside current); the text-length distribution is also tested for drift. For
  images, their properties (width, height, mean brightness, channels as sent; a logged call's thumbnail keeps
  its original's) and the shares of duplicated and unreadable images, over the sampled rows (each image is
  decoded); width, height and brightness distributions are tested for drift.

The report leaves out per-component plots and per-column summary presets on purpose: Evidently builds a
plotly figure for every metric, which is most of a report's time.

Tests follow Evidently's defaults with two changes. They are chosen by the *smaller* side (Evidently looks
at the reference only, which would judge 40 current rows with a distance meant for thousands): up to 1,000
rows a p-value test (Kolmogorov-Smirnov; Z for two labels, chi-squared for more); above, a distance (normed
Wasserstein; Jensen-Shannon for labels) at 0.1, which does not flag tiny but significant shifts on large
samples. And p-values are judged at 0.01, not 0.05: a report runs three verdicts (inputs, labels,
confidence) every time it runs, and at 0.05 about one window in seven of unchanged traffic would raise an
alarm. The input verdict needs ``input_drift_share`` (0.3: 3 of 10) of the components to drift.

Both sides are subsampled (``max_rows``, seeded) so a report takes seconds whatever the traffic. With fewer
than ``min_rows`` rows on either side no test runs: the summary says so and the HTML page explains it.

Evidently and scikit-learn are imported inside the functions that use them (Evidently alone takes seconds
to import), so sensors and definitions can import this module cheaply.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    import pandas as pd

    from loopml.invocation_frames import InvocationFrame

__all__ = [
    "DEFAULT_COMPONENTS",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_MIN_ROWS",
    "DriftInput",
    "DriftSummary",
    "build_drift_report",
    "image_quality",
    "input_quality",
    "text_quality",
]

DEFAULT_COMPONENTS = 10
DEFAULT_MAX_ROWS = 5_000
DEFAULT_MIN_ROWS = 30
DEFAULT_INPUT_DRIFT_SHARE = 0.3
DEFAULT_P_VALUE = 0.01
DISTANCE_THRESHOLD = 0.1
P_VALUE_MAX_ROWS = 1_000  # up to this many rows on the smaller side: p-value tests, above: distances

QUALITY_COLUMNS = ("text_length", "word_count", "is_empty", "is_duplicate", "has_non_ascii")
IMAGE_QUALITY_COLUMNS = ("width", "height", "brightness", "channels", "is_duplicate", "is_unreadable")
DRIFT_TESTED = {"text": ("text_length",), "image": ("width", "height", "brightness")}  # distributions tested
COMPONENTS = "(embedding components)"  # the key of the components' drift count in the report's results

OK = "ok"
NOT_ENOUGH_DATA = "not_enough_data"


@dataclass
class DriftInput:
    """One side of a drift comparison: row-aligned embeddings ``[n, d]``, labels, confidences and inputs
    (``texts``: the texts, or for ``input_type="image"`` the images as data URIs or base64).

    For the reference, ``labels`` should be the model's own labels on the training data (out-of-fold
    predictions) rather than the annotations, so that both sides are model outputs: a model that is
    merely imperfect then shows no label drift.
    """

    embeddings: np.ndarray
    labels: Sequence[str] | np.ndarray | pl.Series
    confidences: Sequence[float] | np.ndarray | pl.Series
    texts: Sequence[str] | np.ndarray | pl.Series
    input_type: str = "text"

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be a [rows, dimensions] matrix, got shape {self.embeddings.shape}")
        n = len(self.embeddings)
        for name in ("labels", "confidences", "texts"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows but embeddings has {n}")

    def __len__(self) -> int:
        return len(self.embeddings)

    @classmethod
    def from_invocations(cls, invocations: InvocationFrame, input_type: str = "text") -> DriftInput:
        """The invocations that carry an embedding (see :func:`loopml.invocation_frames.load_invocations`):
        their answered labels, confidences and inputs (an image call's logged thumbnail)."""
        keep = np.asarray(invocations.has_embedding, dtype=bool)
        frame = invocations.frame
        if not keep.all():
            frame = frame.filter(pl.Series(keep))
        return cls(
            embeddings=invocations.embeddings[keep] if not keep.all() else invocations.embeddings,
            labels=frame["label"],
            confidences=frame["confidence"],
            texts=frame["input_text"],
            input_type=input_type,
        )


@dataclass
class DriftSummary:
    """Key figures of one drift report. Scores are Evidently's drift scores (p-values up to 1,000 rows,
    distances above; see the module docstring); None when not computed."""

    status: str  # ok | not_enough_data
    message: str
    drifted: bool
    n_reference: int
    n_current: int
    html_path: str
    sampled_reference: int = 0
    sampled_current: int = 0
    n_components: int = 0
    explained_variance: float | None = None
    input_drift_share: float | None = None
    input_drifted_components: int | None = None
    input_drifted: bool = False
    label_drift_score: float | None = None
    label_drift_method: str | None = None
    label_drifted: bool = False
    confidence_drift_score: float | None = None
    confidence_drift_method: str | None = None
    confidence_drifted: bool = False
    text_length_drift_score: float | None = None
    text_length_drifted: bool = False
    input_type: str = "text"
    property_drift: dict[str, float] = field(default_factory=dict)  # drift score per tested input property
    properties_drifted: list[str] = field(default_factory=list)
    reference_confidence_mean: float | None = None
    current_confidence_mean: float | None = None
    quality: dict[str, float] = field(default_factory=dict)
    label_shares: dict[str, float] = field(default_factory=dict)  # current window
    reference_label_shares: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def as_metadata(self) -> dict[str, float | int | bool | str]:
        """A flat dict for Dagster metadata: None values are left out, nested figures get prefixed keys."""
        out: dict[str, float | int | bool | str] = {}
        for key, value in asdict(self).items():
            if key == "quality":
                out.update({k: float(v) for k, v in value.items()})
            elif key == "label_shares":
                out.update({f"label_share:{k}": float(v) for k, v in value.items()})
            elif key == "reference_label_shares":
                out.update({f"reference_label_share:{k}": float(v) for k, v in value.items()})
            elif key == "property_drift":
                out.update({f"property_drift:{k}": float(v) for k, v in value.items()})
            elif key == "properties_drifted":
                out[key] = ", ".join(value) or "none"
            elif value is not None:
                out[key] = value
        return out


def text_quality(texts: Sequence[str] | np.ndarray | pl.Series) -> dict[str, float]:
    """Simple input-quality figures of ``texts``: mean length in characters and words, and the shares of
    empty (blank) texts, duplicated texts (rows beyond the first of each distinct text) and texts with
    any non-ASCII character."""
    series = _strings(texts)
    n = len(series)
    if not n:
        return {
            "text_length_mean": 0.0,
            "word_count_mean": 0.0,
            "empty_share": 0.0,
            "duplicate_share": 0.0,
            "non_ascii_share": 0.0,
        }
    text = pl.col("t")
    stats = pl.DataFrame({"t": series.fill_null("")}).select(
        text.str.len_chars().mean().alias("text_length_mean"),
        _word_count(text).mean().alias("word_count_mean"),
        (text.str.strip_chars() == "").mean().alias("empty_share"),
        (1.0 - text.n_unique() / pl.len()).alias("duplicate_share"),
        text.str.contains(_NON_ASCII).mean().alias("non_ascii_share"),
    )
    return {key: float(value or 0.0) for key, value in stats.row(0, named=True).items()}


def image_rows(images: Sequence[str] | np.ndarray | pl.Series) -> pl.DataFrame:
    """Per image: its properties (:func:`loopml.images.image_properties`) and 0/1 flags ``is_duplicate`` (the
    same bytes as an earlier row) and ``is_unreadable`` (its properties are then null). Decodes every image."""
    from loopml.images import IMAGE_PROPERTIES, ImageError, ImageLimits, decode_image, image_properties

    limits = ImageLimits.from_env()
    values = _strings(images).fill_null("").to_list()
    rows: list[dict[str, float | None]] = []
    for value in values:
        try:
            rows.append({**image_properties(decode_image(value, limits)), "is_unreadable": 0.0})
        except ImageError:
            rows.append({**dict.fromkeys(IMAGE_PROPERTIES), "is_unreadable": 1.0})
    schema = {name: pl.Float64 for name in (*IMAGE_PROPERTIES, "is_unreadable")}
    frame = pl.DataFrame(rows, schema=schema)
    duplicate = (~pl.Series(values, dtype=pl.String).is_first_distinct()).cast(pl.Float64)
    return frame.with_columns(duplicate.alias("is_duplicate"))


def image_quality(images: Sequence[str] | np.ndarray | pl.Series) -> dict[str, float]:
    """Input-quality figures of ``images``: mean width, height, brightness and channels of the readable ones,
    and the shares of duplicated and unreadable images."""
    return _image_quality(image_rows(images))


def _image_quality(rows: pl.DataFrame) -> dict[str, float]:
    means = rows.select(
        *(pl.col(name).mean().alias(f"{name}_mean") for name in ("width", "height", "brightness", "channels")),
        pl.col("is_duplicate").mean().alias("duplicate_share"),
        pl.col("is_unreadable").mean().alias("unreadable_share"),
    )
    return {key: float(value or 0.0) for key, value in means.row(0, named=True).items()}


def input_quality(inputs: Sequence[str] | np.ndarray | pl.Series, input_type: str = "text") -> dict[str, float]:
    """:func:`text_quality` or :func:`image_quality`, by the function's input type."""
    return image_quality(inputs) if input_type == "image" else text_quality(inputs)


def build_drift_report(
    reference: DriftInput,
    current: DriftInput,
    html_path: Path,
    *,
    label_set: Sequence[str],
    n_components: int = DEFAULT_COMPONENTS,
    max_rows: int = DEFAULT_MAX_ROWS,
    min_rows: int = DEFAULT_MIN_ROWS,
    input_drift_share: float = DEFAULT_INPUT_DRIFT_SHARE,
    p_value_threshold: float = DEFAULT_P_VALUE,
    seed: int = 0,
    title: str = "LoopML drift report",
) -> DriftSummary:
    """Compare ``current`` with ``reference``, save the Evidently report at ``html_path`` and return its key
    figures. ``label_set``: the function's labels (labels outside it are reported as ``(other)``)."""
    started = time.perf_counter()
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    n_ref, n_cur = len(reference), len(current)
    summary = DriftSummary(
        status=OK, message="", drifted=False, n_reference=n_ref, n_current=n_cur, html_path=str(html_path)
    )
    input_type = current.input_type
    if reference.input_type != input_type:
        raise ValueError(f"a {reference.input_type} reference cannot judge {input_type} inputs")
    summary.input_type = input_type
    rng = np.random.default_rng(seed)
    fit_rows, ref_rows = _split_reference(n_ref, max_rows, min_rows, rng)
    cur_rows = _sample(n_cur, max_rows, rng)
    per_row: list[pl.DataFrame | None] = [None, None]
    if input_type == "image":  # decoding is the cost: the sampled rows only, each decoded once
        per_row = [image_rows(_take(reference.texts, ref_rows)), image_rows(_take(current.texts, cur_rows))]
        ref_quality, cur_quality = (_image_quality(rows) for rows in per_row)
    else:
        ref_quality, cur_quality = text_quality(reference.texts), text_quality(current.texts)
    summary.quality = {f"reference_{k}": v for k, v in ref_quality.items()} | {
        f"current_{k}": v for k, v in cur_quality.items()
    }
    labels = list(dict.fromkeys(str(x) for x in label_set))
    summary.label_shares = _label_shares(current.labels, labels)
    summary.reference_label_shares = _label_shares(reference.labels, labels)
    summary.reference_confidence_mean = _mean(reference.confidences)
    summary.current_confidence_mean = _mean(current.confidences)

    if n_ref < min_rows or n_cur < min_rows:
        summary.status = NOT_ENOUGH_DATA
        summary.message = (
            f"not enough data: {n_cur} current and {n_ref} reference rows (at least {min_rows} each needed); "
            "no drift tests ran"
        )
        _write_placeholder(html_path, title, summary.message)
        summary.seconds = time.perf_counter() - started
        return summary

    if reference.embeddings.shape[1] != current.embeddings.shape[1]:
        raise ValueError(
            f"the embeddings differ in dimension (reference {reference.embeddings.shape[1]}, current "
            f"{current.embeddings.shape[1]}): both sides must come from the function's encoder"
        )
    summary.sampled_reference, summary.sampled_current = len(ref_rows), len(cur_rows)
    ref_frame, cur_frame, components, explained = _frames(
        reference, current, fit_rows, ref_rows, cur_rows, labels, n_components, seed, per_row
    )
    summary.n_components, summary.explained_variance = len(components), explained

    results = _run_report(
        ref_frame, cur_frame, components, html_path, title, input_drift_share, p_value_threshold, input_type
    )
    drifted_components = int(results.get(COMPONENTS, (0.0, False, None))[0] or 0)
    summary.input_drifted_components = drifted_components
    summary.input_drift_share = drifted_components / len(components) if components else 0.0
    summary.input_drifted = bool(components) and summary.input_drift_share >= input_drift_share
    summary.label_drift_score, summary.label_drifted, summary.label_drift_method = results["label"]
    summary.confidence_drift_score, summary.confidence_drifted, summary.confidence_drift_method = results["confidence"]
    tested = {name: results[name] for name in DRIFT_TESTED[input_type] if name in results}
    summary.property_drift = {name: score for name, (score, _, _) in tested.items() if score is not None}
    summary.properties_drifted = [name for name, (_, drifted, _) in tested.items() if drifted]
    if "text_length" in results:
        summary.text_length_drift_score, summary.text_length_drifted, _ = results["text_length"]
    summary.drifted = summary.input_drifted or summary.label_drifted or summary.confidence_drifted
    parts = [
        f"inputs: {drifted_components}/{len(components)} embedding components drifted"
        + (" (drift)" if summary.input_drifted else ""),
        f"labels: {_describe(results['label'])}",
        f"confidence: {_describe(results['confidence'])}",
    ]
    if input_type == "image":
        parts.append(f"image properties drifted: {', '.join(summary.properties_drifted) or 'none'}")
    summary.message = ("drift detected; " if summary.drifted else "no drift; ") + "; ".join(parts)
    summary.seconds = time.perf_counter() - started
    return summary


# --- the pieces ----------------------------------------------------------------------------------------
_NON_ASCII = r"[^\x00-\x7F]"


def _word_count(text: pl.Expr) -> pl.Expr:
    return text.str.count_matches(r"\S+")


def _strings(values: Sequence[str] | np.ndarray | pl.Series) -> pl.Series:
    if isinstance(values, pl.Series):
        return values.cast(pl.String)
    if isinstance(values, np.ndarray):
        values = values.tolist()
    return pl.Series(list(values), dtype=pl.String)


def _floats(values: Sequence[float] | np.ndarray | pl.Series) -> np.ndarray:
    if isinstance(values, pl.Series):
        return values.cast(pl.Float64).fill_null(np.nan).to_numpy()
    return np.asarray(values, dtype=np.float64)


def _mean(values: Sequence[float] | np.ndarray | pl.Series) -> float | None:
    array = _floats(values)
    array = array[np.isfinite(array)]
    return float(array.mean()) if len(array) else None


def _label_shares(labels: Sequence[str] | np.ndarray | pl.Series, label_set: list[str]) -> dict[str, float]:
    series = _strings(labels)
    if not len(series):
        return {}
    counts = dict(series.value_counts().iter_rows())
    shares = {label: counts.pop(label, 0) / len(series) for label in label_set}
    other = sum(counts.values())
    if other:
        shares["(other)"] = other / len(series)
    return shares


def _sample(n: int, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_rows, replace=False))


def _take(values: Any, rows: np.ndarray) -> Any:
    if isinstance(values, pl.Series):
        return values.gather(rows)
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[i] for i in rows.tolist()]


def _split_reference(n: int, max_rows: int, min_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Reference rows to fit the PCA on, and other reference rows to compare with the current window.

    Projections on components fitted to the very same rows are biased: a sample's top components catch
    its own noise, so those rows spread more along them than any other rows do, and an unchanged stream
    would look drifted on the weaker components. Disjoint halves (when there are enough rows) avoid that.
    """
    order = rng.permutation(n)
    if n < 4 * min_rows:
        rows = np.sort(order[:max_rows])
        return rows, rows
    half = n // 2
    return np.sort(order[:half][:max_rows]), np.sort(order[half:][:max_rows])


def _frames(
    reference: DriftInput,
    current: DriftInput,
    fit_rows: np.ndarray,
    ref_rows: np.ndarray,
    cur_rows: np.ndarray,
    label_set: list[str],
    n_components: int,
    seed: int,
    per_row: Sequence[pl.DataFrame | None] = (None, None),
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], float | None]:
    """The two Evidently inputs: PCA components of the embeddings, label, confidence, and the inputs' per-row
    figures (text statistics, or ``per_row``: the sampled images' :func:`image_rows`)."""
    from sklearn.decomposition import PCA

    fit = reference.embeddings[fit_rows]
    k = max(0, min(n_components, fit.shape[1], len(fit) - 1))
    components = [f"pc_{i + 1}" for i in range(k)]
    explained = None
    projected: list[np.ndarray | None] = [None, None]
    if k:
        solver = "randomized" if k < min(fit.shape) // 2 else "full"
        pca = PCA(n_components=k, svd_solver=solver, random_state=seed).fit(fit)
        projected = [pca.transform(reference.embeddings[ref_rows]), pca.transform(current.embeddings[cur_rows])]
        explained = float(pca.explained_variance_ratio_.sum())
    frames = []
    label = pl.col("label")
    for side, rows, pcs, images in zip((reference, current), (ref_rows, cur_rows), projected, per_row, strict=True):
        columns = pl.DataFrame(
            {
                "label": _strings(_take(side.labels, rows)).fill_null("(missing)"),
                "confidence": _floats(_take(side.confidences, rows)),
            }
        ).select(
            *(pl.lit(pl.Series(name, pcs[:, i])) for i, name in enumerate(components) if pcs is not None),
            pl.when(label.is_in(label_set)).then(label).otherwise(pl.lit("(other)")).alias("label"),
            pl.col("confidence"),
        )
        quality = images.select(IMAGE_QUALITY_COLUMNS) if images is not None else _text_rows(_take(side.texts, rows))
        frames.append(pl.concat([columns, quality], how="horizontal").to_pandas())
    return frames[0], frames[1], components, explained


def _text_rows(texts: Sequence[str] | np.ndarray | pl.Series) -> pl.DataFrame:
    """Per text: the figures of :data:`QUALITY_COLUMNS` (0/1 flags as floats)."""
    text = pl.col("t")
    return pl.DataFrame({"t": _strings(texts).fill_null("")}).select(
        text.str.len_chars().cast(pl.Float64).alias("text_length"),
        _word_count(text).cast(pl.Float64).alias("word_count"),
        (text.str.strip_chars() == "").cast(pl.Float64).alias("is_empty"),
        (~text.is_first_distinct()).cast(pl.Float64).alias("is_duplicate"),
        text.str.contains(_NON_ASCII).cast(pl.Float64).alias("has_non_ascii"),
    )


def _run_report(
    ref_frame: pd.DataFrame,
    cur_frame: pd.DataFrame,
    components: list[str],
    html_path: Path,
    title: str,
    input_drift_share: float,
    p_value_threshold: float,
    input_type: str = "text",
) -> dict[str, tuple[float | None, bool, str | None]]:
    """Run the Evidently report, save its HTML, and return per column (drift score, drifted, method)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, MeanValue, ValueDrift

    quality = IMAGE_QUALITY_COLUMNS if input_type == "image" else QUALITY_COLUMNS
    numerical = [*components, "confidence", *quality]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=["label"])
    small = min(len(ref_frame), len(cur_frame)) <= P_VALUE_MAX_ROWS
    n_labels = len(set(ref_frame["label"]) | set(cur_frame["label"]))
    p = p_value_threshold
    num, num_threshold = ("ks", p) if small else ("wasserstein", DISTANCE_THRESHOLD)
    cat, cat_threshold = ("z" if n_labels <= 2 else "chisquare", p) if small else ("jensenshannon", DISTANCE_THRESHOLD)
    metrics: list[Any] = [
        ValueDrift(column="label", method=cat, threshold=cat_threshold),
        ValueDrift(column="confidence", method=num, threshold=num_threshold),
    ]
    if components:
        # One legacy calculation tests every component; its default test fails at input_drift_share.
        metrics.append(
            DriftedColumnsCount(
                columns=components, drift_share=input_drift_share, num_method=num, num_threshold=num_threshold
            )
        )
    # Input quality: the text-length (or image width, height and brightness) distributions side by side, and
    # the mean of each per-row figure (the 0/1 flags' means are the shares of the sampled rows). No pass/fail
    # tests on the means: they are descriptive.
    for column in DRIFT_TESTED[input_type]:
        if ref_frame[column].notna().any() and cur_frame[column].notna().any():
            metrics.append(ValueDrift(column=column, method=num, threshold=num_threshold))
    metrics.extend(MeanValue(column=column, tests=[]) for column in quality)
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(cur_frame, data_definition=definition),
        Dataset.from_pandas(ref_frame, data_definition=definition),
        name=title,
    )
    snapshot.save_html(str(html_path))
    return _drift_results(snapshot.dict())


def _drift_results(exported: dict[str, Any]) -> dict[str, tuple[float | None, bool, str | None]]:
    """Per column: (ValueDrift score, drift test failed, method) from a snapshot's ``dict()`` export."""
    failed = {
        test.get("metric_config", {}).get("metric_id")
        for test in exported.get("tests", [])
        if str(test.get("status", "")).upper().endswith("FAIL")
    }
    results: dict[str, tuple[float | None, bool, str | None]] = {}
    for metric in exported.get("metrics", []):
        config, value = metric.get("config", {}), metric.get("value")
        kind = str(config.get("type", ""))
        if kind.endswith(":ValueDrift"):
            score = float(value) if isinstance(value, int | float) and math.isfinite(value) else None
            results[config["column"]] = (score, metric.get("id") in failed, config.get("method"))
        elif kind.endswith(":DriftedColumnsCount") and isinstance(value, dict):
            results[COMPONENTS] = (float(value.get("count", 0.0)), metric.get("id") in failed, config.get("num_method"))
    return results


def _describe(result: tuple[float | None, bool, str | None]) -> str:
    score, drifted, method = result
    shown = "n/a" if score is None else f"{score:.3g}"
    return f"{'drift' if drifted else 'no drift'} ({method or 'method n/a'} {shown})"


def _write_placeholder(path: Path, title: str, message: str) -> None:
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>\n",
        encoding="utf-8",
    )
