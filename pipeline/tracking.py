"""MLflow tracking for stage runs: one run per stage and task, tagged with what it read and wrote.

The store is ``MLFLOW_TRACKING_URI`` when set (a team's server), else a sqlite file
``mlflow.db`` in the project root (the repo's own, also for experiments that DVC runs in a
temporary copy). With a sqlite store, run and model artifacts go to the ``mlruns/`` folder
beside the database file rather than under whatever the working directory happens to be.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

DEFAULT_EXPERIMENT = "taso"
# The oldest limit MLflow servers enforce on a param value; a team server may run an older
# MLflow than this client, so values are cut to the smaller of it and this client's limit.
PARAM_VALUE_LIMIT = min(500, MAX_PARAM_VAL_LENGTH)


def store_root(root: Path) -> Path:
    """The project whose ``mlflow.db`` a stage at ``root`` uses: ``DVC_ROOT`` when DVC set it, else ``root``.

    ``dvc exp run --queue`` (and ``--temp``) runs the stages in a throwaway copy of the repo
    under ``.dvc/tmp/exps/`` and sets ``DVC_ROOT`` to the repo the experiment came from (for
    a plain ``dvc repro`` DVC sets it to the repo root, which is ``root``). A store inside
    the copy would be deleted with it, registered versions and their ``mlruns/`` artifacts
    included, and two queued experiments would each number their version 1.
    """
    return Path(os.environ.get("DVC_ROOT") or root)


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the sqlite store ``mlflow.db`` in :func:`store_root` (absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(store_root(root) / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute, or relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path).absolute() if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock, shared by every process on this machine, for one tracking store.

    For read-compare-write steps the store cannot do atomically, such as a sqlite store's
    first contact (two processes creating its tables at once collide) and moving an alias
    after comparing metrics. Keyed by the store's URI (default: the current one); across
    machines a team server needs its own coordination.
    """
    uri = uri or mlflow.get_tracking_uri()
    key = hashlib.sha256(str(sqlite_path(uri) or uri).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"taso-mlflow-{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_initialised: set[str] = set()


def configure(root: Path) -> str:
    """Point MLflow tracking and the model registry at :func:`tracking_uri` and return it.

    A sqlite store is created (tables and all) here, once per process, under a file lock.
    """
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    db = sqlite_path(uri)
    if db is not None and uri not in _initialised:
        db.parent.mkdir(parents=True, exist_ok=True)
        with store_lock(uri):
            client = mlflow.MlflowClient(uri, uri)
            client.search_experiments(max_results=1)  # tracking tables
            client.search_registered_models(max_results=1)  # registry tables
        _initialised.add(uri)
    return uri


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``mlruns/`` beside a sqlite file, else the server's choice."""
    db = sqlite_path(uri)
    return str(db.parent / "mlruns") if db is not None else None


def experiment_id(name: str | None = None) -> str:
    """The id of experiment ``name`` (None: ``$MLFLOW_EXPERIMENT_NAME``, else ``taso``), created if
    missing (safe when two processes race to create it)."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(mlflow.get_tracking_uri()))
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit(root: Path) -> str | None:
    """The commit checked out at ``root``, or None outside a git repository (or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def flatten(params: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow params: ``{"a": {"b": 1}}`` → ``{"a.b": "1"}``, values cut to the size limit.

    Lists and tuples stay one value (their string form); None becomes ``"None"``.
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
            continue
        text = str(value)
        if len(text) > PARAM_VALUE_LIMIT:
            text = text[: PARAM_VALUE_LIMIT - 3] + "..."
        out[name[:MAX_ENTITY_KEY_LENGTH]] = text
    return out


class StageRun:
    """The MLflow run of one stage execution; what the stage logs goes through here."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._client = mlflow.MlflowClient()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics (bools and ints become floats); ``step`` defaults to 0."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    def log_outputs(self, outputs: Mapping[str, str]) -> None:
        """Record the digest of each output as tag ``taso.output.<name>``."""
        self.set_tags({f"taso.output.{k}": v for k, v in outputs.items()})

    def set_tags(self, tags: Mapping[str, object]) -> None:
        """Set run tags (values become strings)."""
        if tags:
            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Attach a file, or a folder (under its own name), to the run."""
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path or path.name)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)


@contextlib.contextmanager
def stage_run(
    root: Path,
    *,
    stage: str,
    task: str,
    params: Mapping,
    inputs: Mapping[str, str],
    project=None,
) -> Iterator[StageRun]:
    """Run the block inside an MLflow run named ``<stage>@<task>``.

    The run is tagged with task, stage, training method (``taso.method``: every stage of a
    run, so a search by method finds its masks and metrics too), DVC experiment
    (``DVC_EXP_NAME``, else ``workspace``), git commit and ``taso.input.<name>`` digests, and logs ``params``
    flattened. It ends FINISHED, FAILED when the block raises, or KILLED when it is
    interrupted; the exception always propagates.

    Args:
        root: the project root (for the default store and the git commit).
        params: the params the stage used, nested as in params.yaml.
        inputs: input name → content digest.
        project: the validated params.yaml (``pipeline.params.Params``): the run goes to its
            ``tracking.experiment`` and is tagged with its ``train.method``; None: the default
            experiment (``experiment_id``), no method tag.
    """
    method = project.train.method if project is not None else None
    experiment = project.tracking.experiment if project is not None else None
    configure(root)
    tags = {
        "taso.task": task,
        "taso.stage": stage,
        "taso.dvc_exp": os.environ.get("DVC_EXP_NAME") or "workspace",
        **{f"taso.input.{k}": v for k, v in inputs.items()},
    }
    if method:
        tags["taso.method"] = method
    commit = git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = mlflow.start_run(
        experiment_id=experiment_id(experiment),
        run_name=f"{stage}@{task}",
        tags=tags,
        nested=mlflow.active_run() is not None,
    )
    try:
        flat = flatten(params)
        if flat:
            mlflow.log_params(flat, run_id=run.info.run_id)
        yield StageRun(run.info.run_id)
    except Exception:
        mlflow.end_run("FAILED")
        raise
    except BaseException:
        mlflow.end_run("KILLED")
        raise
    mlflow.end_run("FINISHED")
