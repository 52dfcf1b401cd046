"""Great Expectations validation of a dataset."""

from loopml.annotations import PulledTask, tasks_to_rows
from loopml.dataset import build_dataset
from loopml.validation import CHECK_NAMES, validate_dataset


def dataset_of(items: list[tuple[str, str]]):
    tasks = [
        PulledTask(i, text, "t", [{"annotation_id": i, "label": label, "updated_at": "t"}])
        for i, (text, label) in enumerate(items)
    ]
    return build_dataset(tasks_to_rows(tasks))


def results(items, labels=("pos", "neg"), minimum=2):
    return {r.name: r for r in validate_dataset(dataset_of(items), list(labels), minimum)}


def test_clean_data_passes_every_check() -> None:
    checked = results([("good", "pos"), ("fine", "pos"), ("bad", "neg"), ("awful", "neg")])
    assert list(checked) == list(CHECK_NAMES)
    assert all(r.passed for r in checked.values())


def test_each_problem_fails_its_own_check_with_details() -> None:
    checked = results([("good", "pos"), ("bad", "neg"), ("bad", "pos"), ("  ", "neg"), ("x", "weird")])
    assert not checked["inputs_not_empty"].passed
    assert checked["inputs_not_empty"].details["task_ids"] == [3]
    assert not checked["labels_in_label_set"].passed
    assert checked["labels_in_label_set"].details["unexpected_labels"] == ["weird"]
    assert not checked["no_conflicting_duplicates"].passed
    assert checked["no_conflicting_duplicates"].details["conflicting_inputs"] == 1


def test_too_few_examples_names_the_short_labels() -> None:
    checked = results([("a", "pos"), ("b", "pos"), ("c", "pos"), ("d", "neg")], minimum=2)
    assert not checked["enough_examples_per_label"].passed
    assert checked["enough_examples_per_label"].details["labels_short"] == ["neg"]
    checked = results([("a", "pos"), ("b", "pos")], labels=("pos", "neg", "new"), minimum=1)
    assert checked["enough_examples_per_label"].details["counts"] == {"pos": 2, "neg": 0, "new": 0}


def test_empty_dataset_fails_not_crashes() -> None:
    checked = results([])
    assert not checked["inputs_not_empty"].passed
    assert not checked["enough_examples_per_label"].passed


def test_validations_reuse_one_in_memory_asset() -> None:
    """Each validation is a batch of one asset (the frame is a batch parameter): a long-lived process does not
    grow GX's configuration with every call."""
    import great_expectations as gx
    import pandas as pd

    from loopml.validation import _Validator

    validator = _Validator()
    for values in (["x", "y"], ["x", "z"], ["y"]):
        outcome = validator.validate_pandas(
            pd.DataFrame({"label": values}),
            gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=["x", "y"]),
        )
        assert outcome["success"] is ("z" not in values)
    assert [asset.name for asset in validator._source.assets] == ["frames"]
