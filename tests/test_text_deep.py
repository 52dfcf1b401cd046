"""The text deep tier: SetFit pairs, a short contrastive fine-tune on CPU, calibrated probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loopml.automl.text_deep import fit_text_deep, sample_pairs, shared_backbone

SPORT = [
    "the striker scored twice in the final minutes",
    "the home team won the match on penalties",
    "our goalkeeper saved a late penalty kick",
    "the tennis champion lost in straight sets",
    "the coach praised the defence after the win",
    "fans cheered as the runner crossed the line",
    "the league title was decided on the last day",
    "she won gold in the hundred metres sprint",
    "the cricket captain declared at lunch",
    "a last-minute goal sent the club to the cup final",
    "the boxer knocked out his rival in round three",
    "the cyclists climbed the mountain stage in heavy rain",
]
COOKING = [
    "simmer the onions in butter until golden",
    "add a pinch of salt to the boiling pasta water",
    "bake the bread for forty minutes at high heat",
    "whisk the eggs with sugar until pale",
    "chop the garlic finely and fry it gently",
    "roast the vegetables with olive oil and thyme",
    "knead the dough and let it rise overnight",
    "season the soup with pepper before serving",
    "melt the chocolate slowly over warm water",
    "marinate the chicken in lemon juice and herbs",
    "stir the risotto while adding hot stock",
    "grate the cheese over the warm lasagne",
]


def test_sample_pairs_balances_same_and_different_labels() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    pairs = sample_pairs(y, 4, np.random.default_rng(0))
    assert pairs.shape == (24, 3)
    a, b, target = pairs.T
    assert (a != b).all()
    assert ((y[a] == y[b]) == (target == 1)).all()
    assert target.sum() == 12


@pytest.mark.filterwarnings("ignore")
def test_fit_text_deep_trains_and_predicts_calibrated_probabilities() -> None:
    train_texts = SPORT[:8] + COOKING[:8]
    train_labels = ["sport"] * 8 + ["cooking"] * 8
    label_set = ["cooking", "sport"]
    result = fit_text_deep(
        train_texts, train_labels, label_set, seed=0, max_pairs_per_example=4, epochs=1, train_layers=1
    )

    assert result.steps_run == result.steps_planned == 4  # 16 rows x 4 pairs / batch 16
    assert result.pairs == 64
    assert result.temperature > 0
    original = shared_backbone().network.layers[-1].qkv.weight.cpu()
    assert not torch.equal(result.model.tail.layers[0].qkv.weight, original)  # the copy trained, the shared one not
    assert result.model.memory_bytes() < 10_000_000  # one layer and a head, not a whole encoder

    test_texts = SPORT[8:] + COOKING[8:]
    proba = result.model.predict_proba(test_texts)
    assert proba.shape == (8, 2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    truth = np.array([1] * 4 + [0] * 4)
    assert (proba.argmax(axis=1) == truth).mean() >= 0.75
    assert result.model.predict(test_texts[:1]) in (["sport"], ["cooking"])


@pytest.mark.filterwarnings("ignore")
def test_fit_text_deep_cross_validates_when_asked() -> None:
    texts = SPORT[:6] + COOKING[:6]
    labels = ["sport"] * 6 + ["cooking"] * 6
    result = fit_text_deep(
        texts, labels, ["cooking", "sport"], seed=1, max_pairs_per_example=2, train_layers=1, folds=2
    )
    assert result.cv_accuracy is not None and 0.0 <= result.cv_accuracy <= 1.0
    assert result.oof_proba is not None and result.oof_proba.shape == (12, 2)
    assert result.model.params["folds"] == 2


@pytest.mark.parametrize("n_classes", [2, 3])
def test_the_stored_head_answers_as_scikit_learn(n_classes: int) -> None:
    from sklearn.linear_model import LogisticRegression

    from loopml.automl.text_deep import _fit_head

    rng = np.random.default_rng(n_classes)
    y = np.arange(60) % n_classes
    emb = rng.normal(size=(60, 8)) + y[:, None]
    head = _fit_head(emb, y, seed=0)
    reference = LogisticRegression(max_iter=2000, random_state=0).fit(emb, y)
    fresh = rng.normal(size=(10, 8)) * 2
    np.testing.assert_allclose(head.log_proba(fresh), reference.predict_log_proba(fresh), atol=1e-8)


@pytest.mark.filterwarnings("ignore")
def test_a_text_deep_version_saves_and_loads_to_the_same_answers(tmp_path) -> None:
    from loopml.automl.text_deep import TextDeepClassifier

    texts = SPORT[:6] + COOKING[:6]
    labels = ["sport"] * 6 + ["cooking"] * 6
    model = fit_text_deep(texts, labels, ["cooking", "sport"], max_pairs_per_example=2, train_layers=1).model
    model.encoder_id = "minilm-l6-int8"
    model.save(tmp_path / "version")
    assert TextDeepClassifier.is_saved_at(tmp_path / "version")
    assert not list(tmp_path.glob("**/*.pkl"))  # arrays and a state dict, no pickles
    loaded = TextDeepClassifier.load(tmp_path / "version")
    fresh = SPORT[6:] + COOKING[6:]
    np.testing.assert_allclose(loaded.predict_proba(fresh), model.predict_proba(fresh), atol=1e-6)
    assert (loaded.label_set, loaded.encoder_id, loaded.train_layers) == (["cooking", "sport"], "minilm-l6-int8", 1)
    assert loaded.needs_embeddings is False and loaded.memory_bytes() == model.memory_bytes()
    with pytest.raises(ValueError, match="not a text deep model"):
        TextDeepClassifier.load(tmp_path)
