"""Live Label Studio round trip (label-studio-sdk): push a round's picks into a project, pull labels back.

``push_round``: the project is found by title, or created, with the labeling config generated from the
concept graph's fine nodes (:func:`trainer.annotation.label_config_xml`; an existing project whose classes
changed gets the new config). Each pick's slice is uploaded as an 8-bit PNG rendition
(:func:`trainer.annotation.display_png`): Label Studio stores it and serves it to its logged-in users, so
the trainer and the annotation server need no shared disk. The task then gets the detector pre-annotations
as a prediction and its data: pool key, round, rank, the rationale sentence and terms
(:func:`trainer.annotation.task_data`). The data is written last: a task with ``data.gsal_image_id`` is
complete, and re-pushing a round skips it (no duplicates); a task left half-made by a crash is found by its
uploaded file name and completed. Pushing the next round adds its tasks to the same project.

``pull``: the project's JSON export goes through the file import's validation as a whole
(:func:`trainer.annotation.import_label_studio_tasks`: every task of every round checked first, nothing
written on any problem); then the export is kept under ``<store>/label-studio/`` and each round's import
is logged in the audit log with the export's sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsal_edge.acquisition.concept_graph import ConceptGraph
from gsal_edge.errors import GSALError
from gsal_edge.jsonio import to_jsonable
from trainer import annotation
from trainer.images import atomic_write
from trainer.ref_policy import RefFetcher
from trainer.rounds import audit_log, concept_assigner, fine_counts
from trainer.store.pool_store import PoolStore

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "GSAL Edge"
EXTRA_HINT = "pip install 'gsal-edge[labelstudio]'"
EXPORTS_DIR = "label-studio"
TIMEOUT_S = 60.0


class LabelStudioError(GSALError, RuntimeError):
    """Label Studio refused or could not be reached; the message names the server, the call and its answer."""


@dataclass
class PushReport:
    url: str
    project_id: int
    project: str
    round_id: int
    project_created: bool
    config_updated: bool
    tasks_created: int
    tasks_completed: int  # half-made tasks of an interrupted push, finished now
    tasks_skipped: int  # already in the project
    predictions: int
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LabelStudio:
    """One Label Studio server (URL + API token), reached through the official SDK."""

    def __init__(self, url: str, token: str, *, timeout_s: float = TIMEOUT_S) -> None:
        try:
            from label_studio_sdk import LabelStudio as Client
        except ImportError:
            raise LabelStudioError(f"the Label Studio client is not installed: {EXTRA_HINT}") from None
        self.url = url.rstrip("/")
        self.client = Client(base_url=self.url, api_key=token, timeout=timeout_s)
        self.call("check the token (users.whoami)", self.client.users.whoami)

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; an HTTP or API failure becomes a LabelStudioError naming ``what``."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            hint = " (is --token-file this server's API token?)" if e.status_code in (401, 403) else ""
            raise LabelStudioError(f"{self.url}: {what} failed with HTTP {e.status_code}{hint}: "
                                   f"{_short(e.body)}") from None
        except httpx.HTTPError as e:
            raise LabelStudioError(f"{self.url}: {what}: {type(e).__name__}: {e}") from None

    # -- projects

    def find_project(self, title: str) -> Any | None:
        """The project titled exactly ``title`` (None if there is none; an error if there are several)."""
        found = [p for p in self.call("list projects", lambda: list(self.client.projects.list(title=title)))
                 if p.title == title]
        if len(found) > 1:
            raise LabelStudioError(f"{self.url}: {len(found)} projects are titled {title!r} (ids "
                                   f"{[p.id for p in found]}); rename all but one or pick another --project")
        return found[0] if found else None

    def ensure_project(self, title: str, label_config: str) -> tuple[Any, bool, bool]:
        """(project, created, config updated): create it, or give it ``label_config`` if it has another."""
        proj = self.find_project(title)
        if proj is None:
            proj = self.call(f"create project {title!r}", self.client.projects.create, title=title,
                             label_config=label_config,
                             description="Active-learning picks of GSAL Edge (gsal-edge trainer push)")
            return proj, True, False
        current = self.call(f"read project {proj.id}", self.client.projects.get, proj.id)
        if (current.label_config or "").strip() == label_config.strip():
            return current, False, False
        self.call(f"update the labeling config of project {proj.id}", self.client.projects.update, proj.id,
                  label_config=label_config)
        return current, False, True

    def tasks(self, project_id: int) -> list[Any]:
        return self.call(f"list tasks of project {project_id}",
                         lambda: list(self.client.tasks.list(project=project_id, fields="all")))

    def upload_image(self, project_id: int, name: str, png: bytes) -> int:
        """Upload one PNG as a new task of the project (Label Studio stores and serves it); its task id."""
        # the SDK has no call for a file upload; this is its own HTTP client (base URL and auth) on the
        # import endpoint that the web UI's upload uses
        http = self.client._client_wrapper.httpx_client
        resp = self.call(f"upload {name} to project {project_id}", http.request,
                         f"api/projects/{project_id}/import", method="POST", params={"return_task_ids": "true"},
                         files={name: (name, png, "image/png")})
        if resp.status_code >= 300:
            raise LabelStudioError(f"{self.url}: upload {name} to project {project_id} failed with HTTP "
                                   f"{resp.status_code}: {_short(resp.text)}")
        ids = resp.json().get("task_ids") or []
        if len(ids) != 1:
            raise LabelStudioError(f"{self.url}: upload {name} made {len(ids)} tasks, expected 1: "
                                   f"{_short(resp.text)}")
        return int(ids[0])

    def export_json(self, project_id: int) -> bytes:
        """The project's annotated tasks as Label Studio JSON (what the web UI's JSON export writes)."""
        return self.call(f"export project {project_id}", lambda: b"".join(
            self.client.projects.exports.download_sync(id=project_id, export_type="JSON")))


def _short(body: Any, n: int = 400) -> str:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text if len(text) <= n else text[:n] + " ..."


def _n_predictions(task: Any) -> int:
    n = getattr(task, "total_predictions", None)
    return int(n) if n is not None else len(getattr(task, "predictions", None) or [])


def _image_url(data: dict[str, Any]) -> str:
    url = data.get("image")
    if not url and len(data) == 1:  # a config Label Studio could not map: the one value is the file
        url = next(iter(data.values()))
    return str(url or "")


# -------------------------------------------------------------------------------------------- push


def push_round(
    store: PoolStore,
    graph: ConceptGraph,
    ls: LabelStudio,
    *,
    round_id: int | None = None,
    project: str = DEFAULT_PROJECT,
    mode: annotation.LabelMode = "typed",
    binary_class: str = "defect",
    min_prediction_score: float = 0.0,
    progress: bool = False,
) -> PushReport:
    """Create or update the project with one round's picks (images, pre-annotations, rationale)."""
    from tqdm import tqdm

    rid = round_id if round_id is not None else store.latest_round()
    if rid is None:
        raise LabelStudioError(f"{store.db_path}: no selection round yet; run `gsal-edge trainer select` first")
    picks = store.selection(rid)
    classes = annotation.classes_for(graph, mode, binary_class)
    proj, created, updated = ls.ensure_project(project, annotation.label_config_xml(classes))
    done, half_made = set(), {}
    for t in ls.tasks(proj.id):
        data = t.data or {}
        if data.get("gsal_image_id"):
            done.add(str(data["gsal_image_id"]))
        else:
            half_made[_image_url(data).rpartition("/")[2].partition("-")[2]] = t
    n_new = n_completed = n_pred = 0
    fetcher = RefFetcher.for_store(store)  # slices known only by reference: confined, hash-checked reads
    for pick in tqdm(picks, desc=f"push round {rid}", unit="task", disable=not progress):
        if pick.key in done:
            continue
        name = annotation.image_name(pick.key)
        png, width, height = annotation.display_png(store.slice_info(pick.key), fetcher)
        task = half_made.get(name)
        if task is None:
            task = ls.call(f"read task of {name}", ls.client.tasks.get, str(ls.upload_image(proj.id, name, png)))
            n_new += 1
        else:
            n_completed += 1
        rec = store.record(pick.key, fresh_only=False)
        pred = annotation.ls_prediction(
            rec, annotation.prediction_boxes(rec, width, height, classes, mode=mode, binary_class=binary_class,
                                             min_score=min_prediction_score),
            width, height, f"r{rid}-{pick.rank}")
        if pred is not None and not _n_predictions(task):
            ls.call(f"add the prediction of task {task.id}", ls.client.predictions.create, task=task.id,
                    result=pred["result"], score=pred["score"], model_version=pred["model_version"] or "gsal")
            n_pred += 1
        ls.call(f"write the data of task {task.id}", ls.client.tasks.update, str(task.id),
                data=to_jsonable(annotation.task_data(pick, _image_url(task.data or {}), rid)))
    rep = PushReport(ls.url, int(proj.id), project, rid, created, updated, n_new, n_completed,
                     len(picks) - n_new - n_completed, n_pred, classes)
    audit_log(store).append("label-studio-push", to_jsonable(rep.to_dict()))
    log.info("round %d -> %s project %d: %d new task(s), %d skipped", rid, ls.url, proj.id, n_new,
             rep.tasks_skipped)
    return rep


# -------------------------------------------------------------------------------------------- pull


def pull(
    store: PoolStore,
    graph: ConceptGraph,
    ls: LabelStudio,
    *,
    project: str = DEFAULT_PROJECT,
    rounds: list[int] | None = None,
    mode: annotation.LabelMode = "typed",
    binary_class: str = "defect",
    concepts: str = "auto",
) -> list[annotation.ImportReport]:
    """Import the project's finished annotations, validated as a whole; nothing is written on any problem."""
    proj = ls.find_project(project)
    if proj is None:
        raise LabelStudioError(f"{ls.url}: no project titled {project!r} (push a round first)")
    raw = ls.export_json(proj.id)
    try:
        tasks = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelStudioError(f"{ls.url}: the export of project {proj.id} is not JSON: {e}") from None
    sha = hashlib.sha256(raw).hexdigest()
    assigner, assigner_name = annotation.proposal_concepts, "n/a (typed)"
    if mode == "binary":
        assigner, assigner_name = concept_assigner(store, concepts)
    source = f"label-studio:{ls.url}/projects/{proj.id}"
    reports = annotation.import_label_studio_tasks(store, tasks, graph, source=source, sha256=sha, rounds=rounds,
                                                   mode=mode, binary_class=binary_class, assigner=assigner)
    kept = store.root / EXPORTS_DIR / f"project-{proj.id}-{sha[:16]}.json"
    atomic_write(kept, raw)
    for rep in reports:
        entry = rep.to_dict() | {"export": str(kept), "coverage": fine_counts(store, graph, mode),
                                 "label_mode": mode, "concept_assigner": assigner_name}
        audit_log(store).append("labels", to_jsonable(entry))
    return reports


def read_token(path: str | Path) -> str:
    """The API token in ``path`` (Label Studio: Account & Settings -> Access Token)."""
    from gsal_wire.security import SecurityError, read_secret_file

    try:
        return read_secret_file(path, "--token-file")
    except SecurityError as e:
        raise LabelStudioError(str(e)) from None
