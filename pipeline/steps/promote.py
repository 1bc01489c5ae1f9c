"""promote: the promotion policy, in one place → artifacts/<task>/promotion.json.

With ``tracking.promote: if_better`` the version train registered becomes ``champion`` when
there is none, or when it beats the champion on the task's first metric (strictly; a champion
promoted by hand, without that metric, is kept), unless evaluate found it degenerate (constant
predictions, or no better than the majority class or the labels' mean): that one is never
promoted on its own. With ``never`` nothing moves: promote by hand with ``taso registry promote``. Registering (train) and measuring (evaluate) never promote.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import registry, tracking
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from taso.io import digest_file, read_json, write_json


def run(task: str, root: Path = Path(".")) -> Path:
    """Apply the policy to the version train registered and write what was decided to ``promotion.json``."""
    params = load_params(root / "params.yaml")
    paths, policy = TaskPaths(root, task), params.tracking.promote
    trained, scores = read_json(paths.train_metrics), read_json(paths.metrics)
    name, version = registry.model_name(params.tracking.registry_prefix, task), str(trained["registry_version"])
    tracking.configure(root)  # the project's store, where train registered the version
    registry.check_trained(name, version, trained.get("registry_run_id"), paths.train_metrics)
    metric = params.spec(task).metrics[0]
    used = {"policy": policy, "metric": metric}
    inputs = {"metrics": digest_file(paths.metrics), "train": digest_file(paths.train_metrics)}
    with tracking.stage_run(
        root,
        project=params,
        stage="promote",
        task=task,
        params=used,
        inputs=inputs,
    ) as mlrun:
        before = registry.alias_version(name, registry.CHAMPION)
        flag = scores.get("degenerate")
        if policy == "if_better" and not flag:  # a model that learned nothing is promoted by hand or not at all
            registry.promote_if_better(name, version, metric, scores[metric])
        champion = registry.alias_version(name, registry.CHAMPION)
        decision = {
            "policy": policy,
            "model": name,
            "version": int(version),
            "metric": metric,
            "value": scores[metric],
            "champion_before": before and int(before),
            "champion": champion and int(champion),
            "promoted": champion == version and before != version,
            "degenerate": flag,
        }
        write_json(paths.promotion, decision)
        mlrun.set_tags({"taso.registered_model": name, "taso.promoted": str(decision["promoted"])})
    return paths.promotion
