"""The ``taso`` command line: the pipeline's stages, mask inspection, and the adapter registry.

Heavy libraries (torch, transformers, mlflow) are imported inside commands, so ``taso --help``
and the mask commands start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from taso.names import DEFAULT_RULE, RULES, UNITS

task_option = click.option("--task", required=True, help="Task name, a key of params.yaml `tasks`.")
root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Project root (holds params.yaml).",
)
tracking_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    help="MLflow store; default: sqlite file mlflow.db in the project root.",
)


def _fail_clearly(fn):
    """Turn input errors into one line and exit code 2; bugs keep their traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipeline.errors import USER_ERRORS

        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise click.ClickException(str(e)) from e

    return wrapper


@click.group()
@click.version_option(package_name="taso")
def main() -> None:
    """taso: task-aligned sparse LoRA as a versioned pipeline.

    \b
    Example:
      taso train --task sentiment
    """
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _stage_command(name: str, module: str, summary: str) -> None:
    @main.command(name=name, help=f"{summary}\n\n\b\nExample:\n  taso {name} --task sentiment")
    @task_option
    @root_option
    @_fail_clearly
    def command(task: str, root: Path) -> None:
        import importlib

        out = importlib.import_module(f"pipeline.steps.{module}").run(task, root)
        click.echo(f"{name}@{task}: wrote {out}")


_stage_command(
    "data", "data", "Check every split of the task and fingerprint it, so a changed data file reruns what reads it."
)
_stage_command("calibrate", "calibrate", "Pick the task's calibration examples (seeded).")
_stage_command("score", "score", "Score the importance |W ⊙ ∂L/∂W| of every target weight.")
_stage_command(
    "derive-mask", "derive_mask", "Derive the mask the task trains on (kept rows × columns) from its importance."
)
_stage_command("train", "train", "Train the task's adapter (train.method) and register it as a candidate.")
_stage_command("evaluate", "evaluate", "Evaluate the adapter and record its metrics on the registered version.")
_stage_command("promote", "promote", "Apply tracking.promote: make the version champion if it beats the current one.")


@main.command("check-params")
@root_option
@_fail_clearly
def check_params_stage(root: Path) -> None:
    """Validate the whole of params.yaml (the check-params stage; dvc repro runs it every time).

    \b
    Example:
      taso check-params
    """
    from pipeline.steps import check_params

    check_params.run(root)
    click.echo("params.yaml: valid")


@main.command("compose")
@click.option("--name", required=True, help="Composition name, a key of params.yaml `compositions`.")
@root_option
@_fail_clearly
def compose_stage(name: str, root: Path) -> None:
    """Compose a mask from params.yaml `compositions.<name>` (the compose stage).

    \b
    Example:
      taso compose --name demo-union
    """
    from pipeline.steps import compose

    click.echo(f"compose@{name}: wrote {compose.run(name, root)}")


@main.command("analyze")
@root_option
@_fail_clearly
def analyze_stage(root: Path) -> None:
    """Task overlap heatmap and per-layer profiles of the tasks' masks (the analyze stage).

    \b
    Example:
      taso analyze
    """
    from pipeline.steps import analyze

    click.echo(f"analyze: wrote {analyze.run(root)}")


@main.group()
def mask() -> None:
    """Inspect and compare saved masks.

    \b
    Example:
      taso mask show artifacts/sentiment/mask
    """


@mask.command("show")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--rank", default=1, show_default=True, help="Rank for the trainable-parameter count.")
@click.option("--json", "as_json", is_flag=True, help="Print the full statistics as JSON.")
@_fail_clearly
def mask_show(path: Path, rank: int, as_json: bool) -> None:
    """Print a mask's metadata, density and per-module counts.

    \b
    Example:
      taso mask show artifacts/sentiment/mask --rank 1
    """
    from taso.masks import Mask, mask_stats

    m = Mask.load(path)
    stats = mask_stats(m, rank)
    if as_json:
        click.echo(json.dumps({"digest": m.digest, "meta": m.meta, **stats}, indent=2))
        return
    click.echo(f"digest    {m.digest}")
    for k, v in sorted(m.meta.items()):
        click.echo(f"{k:<17} {v}")
    click.echo(
        f"modules   {stats['n_modules']} non-empty of {len(m.modules)}; density {stats['density']:.4f}; "
        f"trainable at r={rank}: {stats['trainable_params']:,}"
    )
    for name, s in stats["modules"].items():
        click.echo(f"  {name:<55} rows {s['rows']:>5}/{s['shape'][0]:<5} cols {s['cols']:>5}/{s['shape'][1]:<5}")


@mask.command("compose")
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--op", type=click.Choice(["union", "intersection", "weighted"]), required=True, help="How to combine them."
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Mask folder to write.")
@click.option("--force", is_flag=True, help="Replace --out even if it holds files taso did not write.")
@click.option("--weights", default=None, help="weighted: comma-separated weight per input (default: equal).")
@click.option("--p", type=float, default=None, help="weighted: kept fraction of rows and columns of the merged map.")
@click.option(
    "--rule",
    type=click.Choice(RULES),
    default=DEFAULT_RULE,
    show_default=True,
    help="weighted: how to derive the mask.",
)
@click.option(
    "--unit",
    type=click.Choice(UNITS),
    default=None,
    help="weighted: keep attention q/k/v rows one by one (row, the default) or in whole heads (head).",
)
@click.option("--rank", default=1, show_default=True, help="Rank for the trainable-parameter count.")
@root_option
@tracking_option
@_fail_clearly
def mask_compose(
    refs: tuple[str, ...],
    op: str,
    out: Path,
    weights: str | None,
    p: float | None,
    rule: str,
    unit: str | None,
    rank: int,
    force: bool,
    root: Path,
    tracking_uri: str | None,
) -> None:
    """Compose masks given as folders, DVC outs or registry URIs (weighted: importance maps).

    The new mask records its lineage: each input's reference and digest.

    \b
    Example:
      taso mask compose --op union artifacts/sentiment/mask models:/taso-topic@champion --out shared-mask
      taso mask compose --op weighted artifacts/importance/sentiment artifacts/importance/topic --p 0.25 --out w
    """
    from pipeline import sources
    from taso.io import atomic_path, check_replaceable
    from taso.masks import mask_stats

    if op != "weighted" and (weights is not None or p is not None or unit is not None):
        raise click.UsageError("--weights, --p and --unit apply to --op weighted only")
    if op == "weighted" and p is None:
        raise click.UsageError("--op weighted needs --p, the kept fraction of rows and columns (e.g. --p 0.25)")
    try:
        parsed = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise click.BadParameter(
            f"{weights!r}: give one number per input, comma-separated", param_hint="--weights"
        ) from None
    if parsed is not None and len(parsed) != len(refs):
        raise click.BadParameter(f"{len(parsed)} weights for {len(refs)} inputs", param_hint="--weights")
    check_replaceable(out, force)
    if any(r.startswith(sources.REGISTRY_PREFIXES) for r in refs):
        _configure(root, tracking_uri)
    mask = sources.compose_refs(op, list(refs), root=Path("."), weights=parsed, p=p, rule=rule, unit=unit or "row")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        digest = mask.save(tmp, rank=rank)
    stats = mask_stats(mask, rank)
    click.echo(f"{out}: {op} of {len(refs)}, digest {digest}")
    click.echo(f"density {stats['density']:.4f}; trainable at r={rank}: {stats['trainable_params']:,}")


@mask.command("compare")
@click.argument("a", type=click.Path(exists=True, path_type=Path))
@click.argument("b", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print per-module overlaps as JSON.")
@_fail_clearly
def mask_compare(a: Path, b: Path, as_json: bool) -> None:
    """Jaccard overlap of two masks' rows and columns, per module and overall.

    \b
    Example:
      taso mask compare artifacts/sentiment/mask artifacts/topic/mask
    """
    from taso.masks import Mask, compare

    result = compare(Mask.load(a), Mask.load(b))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for name, j in result["modules"].items():
        click.echo(f"  {name:<55} rows {j['rows']:.3f}  cols {j['cols']:.3f}")
    click.echo(f"overall: rows {result['overall']['rows']:.3f}  cols {result['overall']['cols']:.3f}")


@main.group()
def registry() -> None:
    """Look up, pull and promote registered adapters (MLflow model registry).

    \b
    Example:
      taso registry list
    """


def _configure(root: Path, tracking_uri: str | None) -> None:
    """Point MLflow at the store a registry command reads: ``--tracking-uri``, else the project's."""
    import os

    from pipeline import tracking
    from taso.io import InputFileError

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    db = tracking.sqlite_path(tracking.tracking_uri(root))
    if db is not None and not db.is_file():  # a lookup must not leave an empty store behind
        raise InputFileError(
            f"{db}: no MLflow store there, so nothing is registered; run `dvc repro` in the project first, "
            "or name the store that holds the models (--tracking-uri, or MLFLOW_TRACKING_URI)"
        )
    tracking.configure(root)


@registry.command("list")
@click.option("--prefix", default=None, help="Only models whose name starts with this.")
@root_option
@tracking_option
@_fail_clearly
def registry_list(prefix: str | None, root: Path, tracking_uri: str | None) -> None:
    """List registered adapters with their versions and aliases.

    \b
    Example:
      taso registry list --prefix taso
    """
    from pipeline import registry as reg

    _configure(root, tracking_uri)
    for model in reg.list_models(prefix):
        click.echo(model["name"])
        for v in model["versions"]:
            aliases = ",".join(v.get("aliases", [])) or "-"
            click.echo(f"  v{v['version']:<4} aliases {aliases:<20} {json.dumps(v.get('tags', {}), sort_keys=True)}")


@registry.command("show")
@click.argument("uri")
@root_option
@tracking_option
@_fail_clearly
def registry_show(uri: str, root: Path, tracking_uri: str | None) -> None:
    """Show one registered model, or one version by alias or number.

    \b
    Example:
      taso registry show models:/taso-sentiment@champion
    """
    from pipeline import registry as reg

    _configure(root, tracking_uri)
    click.echo(json.dumps(reg.show(uri), indent=2, default=str))


@registry.command("search")
@click.argument("conditions", nargs=-1)
@click.option("--prefix", default=None, help="Only models whose name starts with this.")
@click.option("--json", "as_json", is_flag=True, help="Print the matching versions as JSON.")
@root_option
@tracking_option
@_fail_clearly
def registry_search(
    conditions: tuple[str, ...], prefix: str | None, as_json: bool, root: Path, tracking_uri: str | None
) -> None:
    """Find registered versions by their tags: task, base_model, density, trainable_params, metric.<name>, ...

    Each condition is <tag><op><value> with op one of = != < <= > >=; numbers compare as numbers.

    \b
    Example:
      taso registry search task=sentiment "density<=0.1" "metric.accuracy>=0.9"
    """
    from pipeline import registry as reg

    _configure(root, tracking_uri)
    found = reg.search(list(conditions), prefix)
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    for v in found:
        tags = v["tags"]
        metrics = " ".join(f"{k}={tags[k]}" for k in sorted(tags) if k.startswith("metric."))
        click.echo(
            f"models:/{v['name']}/{v['version']:<4} {','.join(v['aliases']) or '-':<20} "
            f"task={tags.get('task', '?')} density={tags.get('density', '?')} {metrics}"
        )
    if not found:
        click.echo("no version matches", err=True)


@registry.command("pull")
@click.argument("uri")
@click.option(
    "--dest", type=click.Path(path_type=Path), default=None, help="Folder to create (default: <name>-<alias>-<what>)."
)
@click.option("--mask", "what", flag_value="mask", help="Pull only the mask.")
@click.option("--all", "what", flag_value="all", help="Pull adapter, mask and meta.")
@click.option("--adapter", "what", flag_value="adapter", default=True, help="Pull the PEFT adapter (default).")
@click.option("--force", is_flag=True, help="Replace --dest even if it holds files taso did not write.")
@root_option
@tracking_option
@_fail_clearly
def registry_pull(uri: str, dest: Path | None, what: str, force: bool, root: Path, tracking_uri: str | None) -> None:
    """Download a registered adapter (a folder PeftModel.from_pretrained loads) or its mask.

    \b
    Example:
      taso registry pull models:/taso-sentiment@champion --dest champion-adapter
      taso registry pull --mask models:/taso-sentiment@champion
    """
    from pipeline import registry as reg

    _configure(root, tracking_uri)
    if dest is None:
        name, version, alias = reg.parse_uri(uri)
        dest = Path(f"{name}-{alias or 'v' + str(version)}-{what}")
    click.echo(reg.pull(uri, dest, what=what, force=force))


@registry.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--alias", default="champion", show_default=True)
@root_option
@tracking_option
@_fail_clearly
def registry_promote(name: str, version: str, alias: str, root: Path, tracking_uri: str | None) -> None:
    """Point an alias at a version: an explicit decision, never a side effect.

    \b
    Example:
      taso registry promote taso-sentiment 2 --alias champion
    """
    from pipeline import registry as reg

    _configure(root, tracking_uri)
    reg.promote(name, version, alias)
    click.echo(f"{name}@{alias} -> version {version}")


if __name__ == "__main__":
    sys.exit(main())
