"""Behaviour of the AutoML: shapes, determinism, calibration, persistence, small data, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from loopml.automl import AutoMLResult, TextClassifier, run_automl
from loopml.automl.classifier import TfidfHead, sharpen
from loopml.automl.metrics import fit_temperature, log_loss, softmax
from loopml.automl.naive_bayes import class_sums, cnb_weights
from loopml.automl.text_features import TfidfWords
from loopml.config import PROJECT_ROOT

LABELS = ["sport", "politics", "tech"]
VOCAB = {
    "sport": ["match", "goal", "team", "league", "coach", "striker", "season", "cup"],
    "politics": ["minister", "vote", "party", "election", "policy", "parliament", "budget", "law"],
    "tech": ["software", "phone", "chip", "internet", "app", "data", "robot", "startup"],
}
FILLER = ["the", "a", "today", "news", "report", "people", "new", "said"]


def make_dataset(per_label: int, seed: int = 0, dim: int = 32) -> tuple[list[str], np.ndarray, list[str]]:
    """Noisy texts (two label words, one word of a random label, filler) and noisy embeddings around
    fixed label centres: learnable, but not perfectly."""
    centres = np.random.default_rng(1234).normal(size=(len(LABELS), dim))
    rng = np.random.default_rng(seed)
    texts, vectors, labels = [], [], []
    for i, label in enumerate(LABELS):
        for _ in range(per_label):
            other = LABELS[rng.integers(len(LABELS))]
            words = [*rng.choice(VOCAB[label], 2), rng.choice(VOCAB[other]), *rng.choice(FILLER, 4)]
            rng.shuffle(words)
            texts.append(" ".join(words))
            vectors.append(centres[i] + 2.0 * rng.normal(size=dim))
            labels.append(label)
    emb = np.asarray(vectors, dtype=np.float32)
    return texts, emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray, list[str]]:
    return make_dataset(per_label=30)


@pytest.fixture(scope="module")
def result(data: tuple[list[str], np.ndarray, list[str]]) -> AutoMLResult:
    texts, emb, labels = data
    return run_automl(texts, emb, labels, LABELS, folds=5, seed=0)


def test_result_shapes_and_bookkeeping(result: AutoMLResult, data: tuple) -> None:
    texts, _, labels = data
    n = len(texts)
    assert result.oof_proba.shape == (n, len(LABELS))
    np.testing.assert_allclose(result.oof_proba.sum(axis=1), 1.0, atol=1e-9)
    assert result.label_set == LABELS and result.model.label_set == LABELS
    assert result.winner == result.leaderboard[0]
    keys = [(round(c.cv_log_loss, 6), -c.cv_accuracy) for c in result.leaderboard[1:]]
    assert keys == sorted(keys)
    names = {c.name for c in result.leaderboard}
    assert {"linear", "mlp", "tfidf_cnb", "ensemble"} <= names
    assert np.array(result.confusion).shape == (3, 3) and np.array(result.confusion).sum() == n
    assert set(result.per_label) == set(LABELS)
    assert all(result.per_label[label]["support"] == 30 for label in LABELS)
    assert result.cv_accuracy == result.winner.cv_accuracy
    assert result.temperature > 0 and result.train_seconds > 0
    assert result.model.candidate == result.winner.name


def test_separable_data_beats_chance_clearly(result: AutoMLResult) -> None:
    assert result.cv_accuracy >= 0.9
    assert result.cv_macro_f1 >= 0.9
    texts, emb, labels = make_dataset(per_label=20, seed=1)  # fresh examples
    predicted = result.model.predict(texts, emb)
    assert np.mean([p == t for p, t in zip(predicted, labels, strict=True)]) >= 0.85


def test_refit_model_predicts_training_data(result: AutoMLResult, data: tuple) -> None:
    texts, emb, labels = data
    proba = result.model.predict_proba(texts, emb)
    assert proba.shape == (len(texts), 3)
    accuracy = np.mean(np.array(LABELS)[proba.argmax(axis=1)] == np.array(labels))
    assert accuracy >= 0.9


def test_deterministic(data: tuple, result: AutoMLResult) -> None:
    texts, emb, labels = data
    again = run_automl(texts, emb, labels, LABELS, folds=5, seed=0)
    np.testing.assert_array_equal(again.oof_proba, result.oof_proba)
    assert [c.name for c in again.leaderboard] == [c.name for c in result.leaderboard]
    assert [c.params for c in again.leaderboard] == [c.params for c in result.leaderboard]
    np.testing.assert_array_equal(again.model.predict_proba(texts, emb), result.model.predict_proba(texts, emb))


def test_calibration_keeps_or_improves_log_loss(result: AutoMLResult, data: tuple) -> None:
    _, _, labels = data
    y = np.array([LABELS.index(label) for label in labels])
    uncalibrated = sharpen(result.oof_proba, 1.0 / result.temperature)  # undo the fitted temperature
    assert log_loss(result.oof_proba, y) <= log_loss(uncalibrated, y) + 1e-9


def test_fit_temperature_recovers_scale_and_never_hurts() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)
    true_logits = rng.normal(size=(2000, 4))
    true_logits[np.arange(2000), y] += 1.5
    y = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    temperature = fit_temperature(3.0 * true_logits, y)  # over-confident by a factor 3
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert log_loss(softmax(3.0 * true_logits, temperature), y) < log_loss(softmax(3.0 * true_logits), y)
    assert fit_temperature(np.zeros((5, 3)), np.array([0, 1, 2, 0, 1])) == 1.0


def test_smoothed_temperature_targets_stop_short_of_certainty() -> None:
    """Rows all ranked right push an unsmoothed temperature to its lower bound (certainty); with smoothing ``e``
    the fitted probability of identical rows' label is ``1 - e (C - 1) / C``."""
    logits, y = np.tile([4.0, 0.0], (10, 1)), np.zeros(10, dtype=np.int64)
    assert fit_temperature(logits, y) == pytest.approx(0.05)
    tempered = fit_temperature(logits, y, smoothing=0.1)
    assert softmax(logits, tempered)[0, 0] == pytest.approx(0.95, abs=1e-4)


def test_a_model_trained_on_a_few_separable_examples_is_not_certain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every out-of-fold answer right on 2 examples per label: the deployed model's confidence stays short of
    certainty (the winner's temperature is fitted to targets smoothed by CALIBRATION_PSEUDO_ROWS), and its
    out-of-fold probabilities follow the same temperature."""
    from loopml.automl import search

    texts, emb, labels = make_dataset(per_label=2, seed=3)
    emb = np.repeat(np.eye(3, 32, dtype=np.float32), 2, axis=0) + 0.01 * emb  # well apart: the CV is all right
    new_texts, new_emb, _ = make_dataset(per_label=5, seed=4)
    new_emb = np.repeat(np.eye(3, 32, dtype=np.float32), 5, axis=0) + 0.01 * new_emb

    def fit() -> tuple[AutoMLResult, np.ndarray]:
        result = run_automl(texts, emb, labels, LABELS, folds=2, seed=0)
        return result, result.model.predict_proba(new_texts, new_emb)

    result, proba = fit()
    assert result.cv_accuracy == 1.0 and np.mean(proba.argmax(axis=1) == np.repeat([0, 1, 2], 5)) == 1.0
    assert proba.max() < 0.99 and result.oof_proba.max() < 0.99
    monkeypatch.setattr(search, "CALIBRATION_PSEUDO_ROWS", 0.0)
    certain, proba = fit()
    assert proba.max() > 0.999 and certain.oof_proba.max() > 0.999


def test_save_load_round_trip_is_exact(result: AutoMLResult, data: tuple, tmp_path: Path) -> None:
    texts, emb, _ = data
    result.model.save(tmp_path / "model")
    loaded = TextClassifier.load(tmp_path / "model")
    assert loaded.label_set == result.model.label_set
    assert loaded.candidate == result.model.candidate
    assert loaded.encoder_id == result.model.encoder_id
    np.testing.assert_array_equal(loaded.predict_proba(texts, emb), result.model.predict_proba(texts, emb))
    assert loaded.embedding_head is not None
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in loaded.embedding_head.tensors.values())


def test_a_version_saved_with_a_torch_head_still_loads(result: AutoMLResult, data: tuple, tmp_path: Path) -> None:
    """Versions saved before ``head.npz`` have ``head.pt`` (torch tensors): they load and answer the same."""
    import torch

    texts, emb, _ = data
    result.model.save(tmp_path / "model")
    head = result.model.embedding_head
    assert head is not None
    (tmp_path / "model" / "head.npz").unlink()
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in head.tensors.items()}, tmp_path / "model" / "head.pt")
    loaded = TextClassifier.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict_proba(texts, emb), result.model.predict_proba(texts, emb))


def test_serving_a_version_imports_no_torch_search_or_lightning(result: AutoMLResult, tmp_path: Path) -> None:
    """Loading and running a saved version needs numpy (and scipy for TF-IDF) only: a serving process restarts
    seconds sooner without torch's, scikit-learn's and Lightning's imports."""
    import subprocess
    import sys

    result.model.save(tmp_path / "model")
    code = (
        "import sys, numpy as np\n"
        "from loopml.automl import TextClassifier\n"
        f"m = TextClassifier.load({str(tmp_path / 'model')!r})\n"
        "p = m.predict_proba(['a fine film'], np.ones((1, m.embedding_head.dim), dtype=np.float32))\n"
        "assert p.shape == (1, len(m.label_set))\n"
        "print(sorted(x for x in ('torch', 'sklearn', 'pytorch_lightning') if x in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_tfidf_only_model_round_trip(data: tuple, tmp_path: Path) -> None:
    texts, _, labels = data
    y = np.array([LABELS.index(label) for label in labels])
    vectorizer = TfidfWords()
    x = vectorizer.fit_transform(texts)
    head = TfidfHead(vectorizer, cnb_weights(class_sums(x, y, 3), 0.1), temperature=0.5)
    model = TextClassifier(LABELS, encoder_id=None, candidate="tfidf_cnb", tfidf_head=head, embedding_weight=0.0)
    model.save(tmp_path / "tfidf")
    loaded = TextClassifier.load(tmp_path / "tfidf")
    assert not loaded.needs_embeddings and not (tmp_path / "tfidf" / "head.npz").exists()
    np.testing.assert_array_equal(loaded.predict_proba(texts, None), model.predict_proba(texts, None))
    assert np.mean(loaded.predict_proba(texts, None).argmax(axis=1) == y) > 0.9


def test_two_examples_per_label_works() -> None:
    texts, emb, labels = make_dataset(per_label=2, seed=3)
    result = run_automl(texts, emb, labels, LABELS, folds=5)
    assert result.oof_proba.shape == (6, 3)
    assert np.isfinite(result.oof_proba).all()
    assert result.model.predict_proba(texts, emb).shape == (6, 3)


def test_folds_shrink_to_smallest_label() -> None:
    texts, emb, labels = make_dataset(per_label=6, seed=4)
    keep = [i for i, label in enumerate(labels) if label != "tech" or i % 6 < 3]  # 3 tech examples
    result = run_automl([texts[i] for i in keep], emb[keep], [labels[i] for i in keep], LABELS, folds=5)
    assert result.per_label["tech"]["support"] == 3


def test_input_errors(data: tuple) -> None:
    texts, emb, labels = data
    with pytest.raises(ValueError, match="single label"):
        run_automl(texts[:30], emb[:30], labels[:30], LABELS)
    with pytest.raises(ValueError, match="at least 2 labels"):
        run_automl(texts[:30], emb[:30], labels[:30], ["sport"])
    with pytest.raises(ValueError, match="at least 2 examples"):
        run_automl(texts[:31], emb[:31], labels[:31], LABELS[:2])
    with pytest.raises(ValueError, match="not in label_set"):
        run_automl(texts, emb, labels, LABELS[:2])
    with pytest.raises(ValueError, match="differ"):
        run_automl(texts, emb[:-1], labels, LABELS)


def test_complement_nb_matches_scikit_learn(data: tuple) -> None:
    from sklearn.naive_bayes import ComplementNB

    texts, _, labels = data
    y = np.array([LABELS.index(label) for label in labels])
    x = TfidfWords().fit_transform(texts)
    ours = cnb_weights(class_sums(x, y, 3), alpha=0.3)
    reference = ComplementNB(alpha=0.3).fit(x, y)
    np.testing.assert_allclose(ours.T, reference.feature_log_prob_, rtol=1e-5, atol=1e-6)


def test_tfidf_words() -> None:
    texts = ["Not good, not good at all!", "Good film.", "", "not good again"]
    vectorizer = TfidfWords(min_df_bigram=2)
    x = vectorizer.fit_transform(texts)
    assert isinstance(x, sp.csr_matrix) and x.dtype == np.float32 and x.shape[0] == 4
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms, [1, 1, 0, 1], atol=1e-6)
    # words (incl. punctuation) plus the one bigram seen in two texts ("not good")
    assert x.shape[1] == len({"not", "good", ",", "at", "all", "!", "film", ".", "again"}) + 1
    np.testing.assert_array_equal(vectorizer.transform(texts).toarray(), x.toarray())
    unseen = vectorizer.transform(["completely unseen words"])
    assert unseen.nnz == 0


def test_tfidf_small_and_large_inputs_tokenise_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving's few texts are split in Python, training's many by polars: the same rows either way."""
    from loopml.automl import text_features

    texts = [
        "Ünïcödé Straße, ΣΟΦΊΑ and İstanbul: 'quoted'?! ... (x_y) 3½ ²",
        "Cafe\u0301 au lait \u2014 na\u00efve d\u00e9j\u00e0 vu",
        "नमस्ते दुनिया, 你好世界。 こんにちは 안녕하세요 Привет мир",
        "emoji 🙂🙂 tabs\tand\nnewlines\u00a0nbsp x\u200dy a\u200cb \x1c\x1d sep",
        "Not good, not good at all! Привет мир",
        None,
        "",
    ]
    vectorizer = TfidfWords(min_df_bigram=1)
    fitted = vectorizer.fit_transform(texts).toarray()  # type: ignore[arg-type]
    small = vectorizer.transform(texts).toarray()  # type: ignore[arg-type]
    monkeypatch.setattr(text_features, "SMALL_INPUT_CHARS", -1)
    large = vectorizer.transform(texts).toarray()  # type: ignore[arg-type]
    np.testing.assert_array_equal(small, large)
    np.testing.assert_allclose(small, fitted, atol=1e-6)
    assert vectorizer.n_features > 40


def _words_tell_embeddings_mislead(per_label: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """Texts that give the label away; embeddings clustered in groups that have nothing to do with it."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label in LABELS:
        for _ in range(per_label):
            texts.append(" ".join([*rng.choice(VOCAB[label], 3), *rng.choice(FILLER, 3)]))
            labels.append(label)
    centres, groups = rng.normal(size=(6, 32)), rng.integers(0, 6, len(texts))
    emb = (centres[groups] + 0.3 * rng.normal(size=(len(texts), 32))).astype(np.float32)
    return texts, emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def test_tfidf_leads_only_with_enough_examples_per_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 8 examples per label the CV prefers TF-IDF alone here; below MIN_TEXT_ONLY_PER_LABEL it may not
    win alone nor outweigh the embedding head in the ensemble, and it stays on the leaderboard."""
    from loopml.automl import search

    texts, emb, labels = _words_tell_embeddings_mislead(per_label=8)
    assert 8 < search.MIN_TEXT_ONLY_PER_LABEL <= 24
    guarded = run_automl(texts, emb, labels, LABELS, folds=4, seed=0)
    assert guarded.winner.name != "tfidf_cnb"
    assert guarded.model.embedding_weight >= 0.5
    assert any(c.name == "tfidf_cnb" for c in guarded.leaderboard)
    monkeypatch.setattr(search, "MIN_TEXT_ONLY_PER_LABEL", 8)  # enough examples: the CV's choice stands
    assert run_automl(texts, emb, labels, LABELS, folds=4, seed=0).winner.name == "tfidf_cnb"
    texts, emb, labels = _words_tell_embeddings_mislead(per_label=24)
    monkeypatch.undo()
    assert run_automl(texts, emb, labels, LABELS, folds=4, seed=0).winner.name == "tfidf_cnb"


def test_tfidf_cv_gives_no_weight_to_words_no_training_row_of_the_fold_has() -> None:
    """Texts that share no word carry no information for Complement NB, so every out-of-fold prediction is
    uniform, however the stratified folds split the labels (unseen words used to vote for the class the
    fold's training rows had least of, which is the one its held-out rows had most of)."""
    from loopml.automl import search

    texts = [f"word{i}a word{i}b word{i}c" for i in range(16)]
    y = np.array([0, 1] * 8)
    fold_of = search._fold_ids(y, 5, seed=0)
    assert len(set(np.bincount(fold_of[y == 0]) - np.bincount(fold_of[y == 1]))) > 1  # unbalanced folds
    candidates, _, _ = search._tfidf_branch(texts, y, 2, fold_of, 5)
    for candidate in candidates:
        np.testing.assert_allclose(candidate.oof_proba, 0.5, atol=1e-6)


def _xor_embeddings_uninformative_words(per_label: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """Two labels whose embeddings form an XOR pattern (no linear head separates them, an MLP does) and whose
    texts are random words shared by both labels (the bag of words is at chance)."""
    rng = np.random.default_rng(seed)
    words = [w for vocab in VOCAB.values() for w in vocab]
    corners = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]], dtype=np.float32)
    texts, vectors, labels = [], [], []
    for i in range(2 * per_label):
        label = LABELS[i % 2]
        corner = corners[2 * (i % 2) + rng.integers(2)]
        vector = 0.05 * rng.normal(size=16).astype(np.float32)
        vector[:2] += corner
        texts.append(" ".join(rng.choice(words, 6)))
        vectors.append(vector)
        labels.append(label)
    emb = np.asarray(vectors, dtype=np.float32)
    return texts, emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def test_small_data_keeps_the_mlp_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below MIN_MLP_PER_LABEL examples of a label the MLP neither wins nor joins the ensemble, however much
    better its CV looks; it stays on the leaderboard."""
    from loopml.automl import search

    texts, emb, labels = _xor_embeddings_uninformative_words(per_label=30)
    assert 30 < search.MIN_MLP_PER_LABEL
    small = run_automl(texts, emb, labels, LABELS[:2], folds=5, seed=0)
    assert small.winner.name == "linear"
    assert small.model.embedding_head is not None and small.model.embedding_head.kind == "linear"
    mlp = next(c for c in small.leaderboard if c.name == "mlp")
    assert mlp.cv_accuracy > small.winner.cv_accuracy + 0.2  # the MLP was clearly better and still not taken
    monkeypatch.setattr(search, "MIN_MLP_PER_LABEL", 20)  # enough examples: the CV's choice stands
    assert run_automl(texts, emb, labels, LABELS[:2], folds=5, seed=0).winner.name == "mlp"


def test_tfidf_evidence_is_measured_against_the_label_prior() -> None:
    """A model passes only when its out-of-fold log loss beats predicting the label frequencies by
    TFIDF_EVIDENCE_SE standard errors."""
    from loopml.automl import search

    y = np.array([0, 0, 0, 1] * 25)
    prior = np.tile([0.75, 0.25], (len(y), 1))

    def candidate(proba: np.ndarray) -> search._Candidate:
        return search._Candidate("tfidf_cnb", {}, proba, 1.0, 0.0)

    assert not search._beats_prior(candidate(prior), y)  # the prior itself
    informative = np.where(y[:, None] == np.arange(2), 0.9, 0.1)
    assert search._beats_prior(candidate(informative), y)
    noisy = informative.copy()
    noisy[::3] = noisy[::3, ::-1]  # a third of the rows confidently wrong: worse than the prior on average
    assert not search._beats_prior(candidate(noisy), y)


def test_selection_asks_more_evidence_of_a_variant_of_the_default_head() -> None:
    """The winner is the lowest-log-loss candidate among the default linear head and those that beat it
    clearly: by SELECTION_STANDARD_ERRORS (TF-IDF model, ensemble) or HEAD_VARIANT_STANDARD_ERRORS (another
    C, the MLP) standard errors of the paired per-example log-loss difference."""
    from loopml.automl import search

    assert search.SELECTION_STANDARD_ERRORS < 2.0 < search.HEAD_VARIANT_STANDARD_ERRORS <= 5.0
    n = 100
    y = np.zeros(n, dtype=np.int64)
    wobble = 0.1 * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)  # standard error of a mean difference: 0.01

    def candidate(name: str, params: dict, z: float, emb_index: int | None) -> search._Candidate:
        p = 0.5 * np.exp(0.01 * z + wobble if z else np.zeros(n))  # z standard errors better than the default
        made = search._Candidate(name, params, np.column_stack([p, 1.0 - p]), 1.0, 0.0)
        made.emb_index = emb_index
        search._score(made, y)
        return made

    def winner(*others: search._Candidate) -> search._Candidate:
        default = candidate("linear", {"C": search.DEFAULT_LINEAR_C}, 0.0, 0)
        return search._select(sorted([default, *others], key=lambda c: c.rank_key()), y)

    variant_2se = candidate("linear", {"C": 4.0}, 2.0, 1)
    ensemble_1_5se = candidate("ensemble", {}, 1.5, None)
    assert winner(variant_2se).params == {"C": search.DEFAULT_LINEAR_C}  # 2 SE: not enough for a variant
    assert winner(variant_2se, ensemble_1_5se) is ensemble_1_5se  # the best of the clearly better ones
    assert winner(candidate("mlp", {"C": 4.0}, 2.0, 3), ensemble_1_5se) is ensemble_1_5se
    assert winner(candidate("ensemble", {}, 0.5, None)).params == {"C": search.DEFAULT_LINEAR_C}
    variant_5se = candidate("linear", {"C": 16.0}, 5.0, 2)
    assert winner(variant_5se, ensemble_1_5se) is variant_5se


def test_a_few_unbalanced_examples_do_not_set_the_answers_prior(monkeypatch: pytest.MonkeyPatch) -> None:
    """The heads learn label frequencies smoothed by PRIOR_PSEUDO_COUNT pseudo-examples per label: trained on
    12 "sport" items and 2 of each other label, the model still answers every label on balanced new data
    (learning the raw frequencies, the regularised head answers "sport" for nearly everything)."""
    from loopml.automl import search

    y = np.array([0] * 5 + [1] * 2 + [2] * 2)
    np.testing.assert_allclose(search.label_prior(y, 3), np.array([15, 12, 12]) / 39)
    large = np.array([0] * 6000 + [1] * 3000 + [2] * 1000)
    np.testing.assert_allclose(search.label_prior(large, 3), [0.6, 0.3, 0.1], atol=0.002)
    weights = search._fold_weights(y, np.ones(len(y), dtype=bool), search.label_prior(y, 3))
    np.testing.assert_allclose(np.bincount(y, weights=weights) / weights.sum(), search.label_prior(y, 3))

    def fit_and_score(seed: int) -> tuple[float, set[str]]:
        texts, emb, labels = make_dataset(per_label=12, seed=seed)
        keep = [i for i, label in enumerate(labels) if label == "sport" or i % 12 < 2]
        new_texts, new_emb, truth = make_dataset(per_label=50, seed=100 + seed)
        result = run_automl([texts[i] for i in keep], emb[keep], [labels[i] for i in keep], LABELS, seed=0)
        predicted = result.model.predict(new_texts, new_emb)
        return float(np.mean(np.array(predicted) == np.array(truth))), set(predicted)

    smoothed = [fit_and_score(seed) for seed in (1, 2, 3)]
    assert all(len(answers) >= 2 for _, answers in smoothed)
    monkeypatch.setattr(search, "PRIOR_PSEUDO_COUNT", 0.0)
    raw = [fit_and_score(seed) for seed in (1, 2, 3)]
    assert np.mean([a for a, _ in smoothed]) > np.mean([a for a, _ in raw]) + 0.1


def test_without_text_candidates_only_embedding_heads_compete(data: tuple, tmp_path: Path) -> None:
    """Inputs that are not text (images, passed as data URIs) never get a TF-IDF model: the winner and every
    candidate on the leaderboard are embedding heads, and the saved model predicts from embeddings alone."""
    texts, emb, labels = data
    uris = [f"data:image/png;base64,QUJD{i}" for i in range(len(texts))]  # meaningless as text
    result = run_automl(uris, emb, labels, LABELS, folds=5, seed=0, text_candidates=False)
    assert result.model.tfidf_head is None and result.model.embedding_head is not None
    assert all("tfidf" not in s.name and "ensemble" not in s.name for s in result.leaderboard)
    assert result.cv_accuracy > 0.6
    result.model.save(tmp_path / "m")
    loaded = TextClassifier.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict_proba(uris[:5], emb[:5]), result.model.predict_proba(uris[:5], emb[:5]))


def test_expected_calibration_error_is_the_top_label_gap_weighted_by_bin() -> None:
    """Top-label ECE with 15 equal-width bins: rows at 0.9 right half the time are off by 0.4, and so on."""
    from loopml.automl.metrics import expected_calibration_error

    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(proba, y) == pytest.approx(0.4 * 0.5 + 0.4 * 0.25 + 0.2 * 0.25, abs=1e-6)
    rng = np.random.default_rng(0)
    confident = rng.uniform(0.5, 1.0, 20_000)
    right = rng.uniform(size=confident.size) < confident  # right exactly as often as it says
    calibrated = np.stack([confident, 1 - confident], axis=1)
    assert expected_calibration_error(calibrated, np.where(right, 0, 1)) < 0.02


def test_few_rows_near_chance_do_not_soften_the_winner_below_its_own_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels unrelated to the features on 24 rows: the out-of-fold answers are at chance and a free temperature
    fit softens the winner (``T > 1``); below MIN_ROWS_TO_SOFTEN rows the temperature stays at most 1."""
    from loopml.automl import search

    rng = np.random.default_rng(7)
    emb = rng.normal(size=(24, 16)).astype(np.float32)
    labels = [LABELS[i % 2] for i in range(24)]
    texts = [f"item {i}" for i in range(24)]
    capped = run_automl(texts, emb, labels, LABELS[:2], text_candidates=False)
    assert capped.temperature <= 1.0
    monkeypatch.setattr(search, "MIN_ROWS_TO_SOFTEN", 0)
    free = run_automl(texts, emb, labels, LABELS[:2], text_candidates=False)
    assert free.temperature > 1.0
