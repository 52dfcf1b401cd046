"""An in-memory stand-in for Label Studio with the client's interface, for in-process Dagster tests.

It isolates asset and sensor logic from the server; the end-to-end tests use the real server.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from assets.resources import LoopMLResource
from loopml.labelstudio import AnnotationRecord, LabelStudioUnavailable, Prediction, extract_label

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeTask:
    task_id: int
    data: dict
    updated_at: str
    annotations: list[AnnotationRecord] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


class FakeLabelStudio:
    """Projects, tasks and annotations in memory; ``down = True`` makes every call fail as unreachable."""

    def __init__(self) -> None:
        self.tasks: dict[int, FakeTask] = {}
        self.projects: dict[int, list[int]] = {}
        self.label_configs: dict[int, str] = {}
        self.predictions: dict[int, list[Prediction]] = {}
        self.sampling: dict[int, str] = {}
        self.model_versions: dict[int, str] = {}
        self.down = False
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)

    def _now(self) -> str:
        return (_EPOCH + timedelta(seconds=next(self._clock))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _check(self) -> None:
        if self.down:
            raise LabelStudioUnavailable(
                "Label Studio is not reachable at http://fake (down); start it with `loopml up`"
            )

    def ensure_reachable(self) -> None:
        self._check()

    def health(self) -> bool:
        return not self.down

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        self._check()
        pid = next(self._ids)
        self.projects[pid] = []
        self.label_configs[pid] = label_config
        return pid

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        self._check()
        for task in tasks:
            tid = next(self._ids)
            self.tasks[tid] = FakeTask(tid, task["data"], self._now(), meta=task.get("meta", {}))
            self.projects[project_id].append(tid)
            for p in task.get("predictions", []):  # predictions imported with the task
                label = extract_label(p["result"]) or ""
                self.predictions.setdefault(tid, []).append(Prediction(tid, label, p.get("score"), p["model_version"]))
        return len(tasks)

    def _touch(self, task: FakeTask) -> None:
        task.updated_at = self._now()

    def create_annotation(self, task_id: int, label: str, *, must_pass: bool = False, **_: object) -> int:
        self._check()
        task = self.tasks[task_id]
        now = self._now()
        aid = next(self._ids)
        task.annotations.append(AnnotationRecord(aid, task_id, label, False, 1, now, now, must_pass))
        self._touch(task)
        return aid

    def skip_task(self, task_id: int) -> int:
        self._check()
        task = self.tasks[task_id]
        now = self._now()
        aid = next(self._ids)
        task.annotations.append(AnnotationRecord(aid, task_id, None, True, 1, now, now))
        self._touch(task)
        return aid

    def update_annotation(self, annotation_id: int, label: str, **_: object) -> None:
        self._check()
        for task in self.tasks.values():
            for i, a in enumerate(task.annotations):
                if a.annotation_id == annotation_id:
                    now = self._now()
                    task.annotations[i] = AnnotationRecord(
                        a.annotation_id, a.task_id, label, False, 1, a.created_at, now
                    )
                    self._touch(task)

    def delete_annotation(self, annotation_id: int) -> None:
        """Like the server, deleting an annotation bumps its task's updated_at."""
        self._check()
        for task in self.tasks.values():
            if any(a.annotation_id == annotation_id for a in task.annotations):
                task.annotations = [a for a in task.annotations if a.annotation_id != annotation_id]
                self._touch(task)

    def _project_tasks(self, project_id: int) -> list[FakeTask]:
        return [self.tasks[t] for t in self.projects[project_id]]

    def changed_tasks(self, project_id: int, since: str | None, upper: str | None = None) -> list[FakeTask]:
        self._check()
        return [
            t for t in self._project_tasks(project_id) if t.annotations and (since is None or t.updated_at > since)
        ] + [
            t
            for t in self._project_tasks(project_id)
            if not t.annotations and since is not None and t.updated_at > since
        ]

    def annotated_task_ids(self, project_id: int) -> set[int]:
        self._check()
        return {t.task_id for t in self._project_tasks(project_id) if t.annotations}

    def task_fingerprint(self, project_id: int) -> tuple[str | None, int]:
        self._check()
        return self.latest_task_update(project_id), len(self.projects[project_id])

    def has_annotations(self, project_id: int) -> bool:
        self._check()
        return any(t.annotations for t in self._project_tasks(project_id))

    def latest_task_update(self, project_id: int) -> str | None:
        self._check()
        return max((t.updated_at for t in self._project_tasks(project_id)), default=None)

    def unlabeled_tasks(self, project_id: int, limit: int) -> list[FakeTask]:
        self._check()
        return [t for t in self._project_tasks(project_id) if not t.annotations][:limit]

    def task_texts(self, project_id: int, key: str = "text") -> dict[int, str]:
        self._check()
        return {t.task_id: str(t.data.get(key, "")) for t in self._project_tasks(project_id)}

    def get_label_config(self, project_id: int) -> str:
        self._check()
        return self.label_configs[project_id]

    def update_label_config(self, project_id: int, label_config: str) -> None:
        self._check()
        self.label_configs[project_id] = label_config

    def import_predictions(self, project_id: int, predictions: list[Prediction]) -> int:
        self._check()
        config = self.label_configs.get(project_id, "")
        for p in predictions:
            assert p.task_id in self.projects[project_id], f"task {p.task_id} is not in project {project_id}"
            if 'toName="' in config:  # as Label Studio, which creates no prediction for an object not in the config
                assert f'toName="{p.to_name}"' in config, f"prediction to {p.to_name!r}, not in the label config"
            self.predictions.setdefault(p.task_id, []).append(p)
        return len(predictions)

    def set_model_version(self, project_id: int, model_version: str) -> None:
        self._check()
        from loopml.labelstudio import LabelStudioError

        versions = {p.model_version for t in self.projects[project_id] for p in self.predictions.get(t, [])}
        if model_version not in versions:  # as Label Studio 1.23 answers (HTTP 400)
            raise LabelStudioError(
                f"set the model version of project {project_id} failed (HTTP 400): Model version does not exist"
            )
        self.model_versions[project_id] = model_version
        self.sampling[project_id] = "Uncertainty sampling"


class FakeLoopMLResource(LoopMLResource):
    """LoopMLResource whose Label Studio is a shared FakeLabelStudio (by key, since resources are frozen)."""

    fake_key: str = "default"

    def labelstudio(self) -> FakeLabelStudio:  # type: ignore[override]
        return FAKES.setdefault(self.fake_key, FakeLabelStudio())


FAKES: dict[str, FakeLabelStudio] = {}
