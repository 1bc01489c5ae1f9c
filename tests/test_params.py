"""params.yaml → validated objects: the committed file loads, and bad input names the key path."""

from pathlib import Path

import pytest
import yaml

from pipeline.params import Params, ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_load_and_build_task_specs(raw):
    params = load_params(ROOT / "params.yaml")
    assert set(params.tasks) == set(raw["tasks"])
    for name in params.tasks:
        spec = params.spec(name)
        assert spec.name == name and spec.source.startswith("demo:")
        assert spec.max_length == raw["model"]["max_length"]
    assert params.train.config(params.seed).lr == raw["train"]["lr"]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("mask", "p"), 0.0, "mask.p"),
        (("mask", "p"), 1.5, "mask.p"),
        (("train", "rank"), 0, "train.rank"),
        (("train", "lr"), -1e-3, "train.lr"),
        (("train", "lr"), 0, "train.lr"),
        (("calibrate", "n"), 0, "calibrate.n"),
        (("train", "epochs"), "three", "train.epochs"),
        (("mask", "rule"), "diagonal", "mask.rule"),
        (("tasks", "sentiment", "mask_source"), "s3://bucket/mask", "tasks.sentiment.mask_source"),
    ],
)
def test_bad_value_names_key_path(tmp_path, raw, path, value, expected):
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError, match=rf"{expected}:"):
        load_params(write(tmp_path, raw))


def test_unknown_key_is_refused_with_its_path(tmp_path, raw):
    raw["train"]["learning_rate"] = 0.1
    with pytest.raises(ParamsError, match=r"train\.learning_rate: unknown key"):
        load_params(write(tmp_path, raw))


def test_unknown_task_key_is_refused(tmp_path, raw):
    raw["tasks"]["sentiment"]["text_field"] = "sentence"
    with pytest.raises(ParamsError, match=r"tasks\.sentiment\.text_field: unknown key"):
        load_params(write(tmp_path, raw))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("labels", [0, 1], r'label values are text, as read from the file: write labels: \["0", "1"\]'),
        ("labels", ["no", "yes", "no"], r"each label names one class id; \['no'\] appear more than once"),
        ("source", "demo:nope", r"no demo task 'nope'; built-in demo tasks: entailment, sentiment, topic"),
        ("mask_source", "registry:taso-topic", r"'registry:taso-topic': a registry source names a version"),
        ("mask_source", "models:/taso-topic/latest", r"'models:/taso-topic/latest': a registry source names a version"),
    ],
)
def test_a_task_value_that_would_fail_later_fails_here(tmp_path, raw, key, value, message):
    # Each would otherwise pass the check and fail in a stage (a traceback, or a registry miss) or,
    # for duplicate labels, train a class no example can reach.
    raw["compositions"] = {}
    raw["tasks"]["sentiment"][key] = value
    with pytest.raises(ParamsError, match=rf"tasks\.sentiment\.{key}: {message}"):
        load_params(write(tmp_path, raw))


@pytest.mark.parametrize("source", ["models:/taso-topic/3", "registry:taso-topic@champion", "models:/a/b@candidate"])
def test_registry_sources_that_name_a_version_pass(tmp_path, raw, source):
    raw["compositions"] = {}
    raw["tasks"]["sentiment"]["mask_source"] = source
    assert load_params(write(tmp_path, raw)).task("sentiment").mask_source == source


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    # The first copy is the one a reader sees and edits; plain YAML would keep the second.
    doubled = text.replace("\nseed: 0", "\nseed: 0\nseed: 1", 1)
    assert doubled != text
    path = tmp_path / "params.yaml"
    path.write_text(doubled)
    line = doubled.splitlines().index("seed: 0") + 1
    with pytest.raises(ParamsError, match=rf"key 'seed' appears twice in one block \(first at line {line}\)"):
        load_params(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_unknown_task_lists_known_tasks(raw, tmp_path):
    params = load_params(write(tmp_path, raw))
    with pytest.raises(ParamsError, match=r"tasks\.nope: no such task; tasks in params.yaml: .*sentiment"):
        params.task("nope")


def test_task_without_mask_source_is_refused(tmp_path, raw):
    # dvc.yaml tracks tasks.<name>.mask_source, so the schema insists on it too.
    del raw["tasks"]["topic"]["mask_source"]
    with pytest.raises(ParamsError, match=r"tasks\.topic\.mask_source: Field required"):
        load_params(write(tmp_path, raw))


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (
            {"labels": ["true", "false"], "metrics": ["exact_match"]},
            r"metrics \['exact_match'\] do not apply to a choice task",
        ),
        ({"metrics": ["accuracy"]}, r"metrics \['accuracy'\] do not apply to a generation task .* use exact_match"),
        ({"metrics": ["exact_match"], "answer_template": "the answer"}, r"answer_template: .*must contain \{\}"),
    ],
)
def test_a_decoder_task_is_scored_as_what_it_is(tmp_path, raw, task, expected):
    raw["tasks"]["gsm"] = {"source": str(tmp_path), "task_type": "causal_lm", "mask_source": "own", **task}
    with pytest.raises(ParamsError, match=rf"tasks\.gsm.*{expected}"):
        load_params(write(tmp_path, raw))


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ({"metrics": ["exact_match"]}, r"metrics \['exact_match'\] do not apply to a classification task"),
        ({"metrics": ["pearson"]}, r"do not apply to a classification task; .* needs task_type: regression"),
        ({"task_type": "regression", "labels": None, "metrics": ["accuracy"]}, r"use pearson or spearman"),
        ({"task_type": "regression", "metrics": ["pearson"]}, r"a regression task predicts a number: drop labels"),
        ({"labels": ["a", "b", "c"], "metrics": ["accuracy", "f1"]}, r"f1 here is binary .* 3 labels"),
        ({"answer_template": "it is {}"}, r"answer_template applies to task_type: causal_lm only"),
    ],
)
def test_settings_that_cannot_work_stop_at_validation(tmp_path, raw, task, expected):
    raw["tasks"]["sentiment"] |= task
    with pytest.raises(ParamsError, match=rf"tasks\.sentiment: .*{expected}"):
        load_params(write(tmp_path, raw))


def test_a_decoder_task_builds_its_spec(tmp_path, raw):
    raw["tasks"]["boolq"] = {
        "source": str(tmp_path),
        "task_type": "causal_lm",
        "text_fields": ["instruction", "input"],
        "label_field": "answer",
        "labels": ["true", "false"],
        "answer_template": "the correct answer is {}",
        "mask_source": "own",
    }
    spec = load_params(write(tmp_path, raw)).spec("boolq")
    assert spec.options == ["the correct answer is true", "the correct answer is false"]
    assert spec.answer("true") == "the correct answer is true"


def test_code_defaults_are_the_committed_defaults(raw):
    # A key left out of params.yaml (an older repo, a trimmed copy) must run as the committed file
    # says, so the defaults in pipeline/params.py and params.yaml cannot drift apart.
    defaults = Params.model_construct().model_dump()  # no tasks: construct skips validation
    drift = {
        f"{section}.{key}": (defaults[section][key], value)
        for section, values in raw.items()
        if isinstance(values, dict) and section not in ("tasks", "compositions")
        for key, value in values.items()
        if defaults[section][key] != value
    }
    assert not drift, f"params.yaml and pipeline/params.py disagree (code, yaml): {drift}"
    assert defaults["seed"] == raw["seed"]


def test_the_head_follows_the_task(tmp_path, raw):
    pair = {"task_type": "regression", "text_fields": ["a", "b"], "labels": None, "metrics": ["pearson"]}
    raw["tasks"]["sentiment"] |= pair
    params = load_params(write(tmp_path, raw))
    assert params.task("sentiment").head_kind() == "cosine"  # a regression over pairs reads their cosine
    assert params.task("entailment").head_kind() == "classifier"
    raw["tasks"]["sentiment"]["head"] = "classifier"
    assert load_params(write(tmp_path, raw)).task("sentiment").head_kind() == "classifier"
    raw["tasks"]["entailment"]["head"] = "cosine"  # a classified pair may read its cosine too
    assert load_params(write(tmp_path, raw)).task("entailment").head_kind() == "cosine"
    raw["tasks"]["topic"]["head"] = "cosine"
    with pytest.raises(ParamsError, match=r"tasks\.topic: .*head cosine .* needs two text_fields"):
        load_params(write(tmp_path, raw))
    raw["tasks"]["topic"]["head"] = "auto"
    raw["model"]["pooling"] = "sum"
    with pytest.raises(ParamsError, match=r"model\.pooling: .*unknown pooling 'sum'"):
        load_params(write(tmp_path, raw))


@pytest.mark.parametrize(
    ("key", "value"),
    [("p", 0), ("p", 1.5), ("period", 0), ("taylor", "third"), ("schedule", "sometimes"), ("start", "warm")],
)
def test_losia_knobs_are_checked_with_their_key_path(tmp_path, raw, key, value):
    raw["losia"][key] = value
    with pytest.raises(ParamsError, match=rf"losia\.{key}:"):
        load_params(write(tmp_path, raw))


def test_losia_from_a_random_start_refuses_a_reused_mask_and_from_a_mask_takes_one(tmp_path, raw):
    raw["train"]["method"] = "losia"
    raw["tasks"]["entailment"]["mask_source"] = "composition:demo-union"
    with pytest.raises(ParamsError, match="train.method losia trains without a mask.*losia.start: mask"):
        load_params(write(tmp_path, raw))
    raw["losia"]["start"] = "mask"
    assert load_params(write(tmp_path, raw)).uses_mask()


def test_variants_of_importance_and_unit_are_validated_together(tmp_path, raw):
    raw["mask"] |= {"unit": "head", "rule": "elementwise"}
    with pytest.raises(ParamsError, match=r"mask: .*unit head .*use unit row"):
        load_params(write(tmp_path, raw))
    raw["mask"] |= {"unit": "head", "rule": "global"}
    raw["score"]["statistic"] = "sensitivity"
    params = load_params(write(tmp_path, raw))
    assert (params.score.statistic, params.mask.unit) == ("sensitivity", "head")


def test_yaml_merge_keys_still_work_and_may_be_overridden(tmp_path):
    # Anchors are how many similar tasks get written; only a key repeated by hand is refused.
    text = (ROOT / "params.yaml").read_text().replace("  sentiment:\n", "  sentiment: &base\n", 1)
    text = text.replace("\ncalibrate:", "\n  sentiment2:\n    <<: *base\n    max_train: 500\n\ncalibrate:", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path)
    assert params.task("sentiment2").max_train == 500 and params.task("sentiment2").source == "demo:sentiment"


def test_labels_of_the_wrong_shape_name_the_key(tmp_path, raw):
    raw["tasks"]["sentiment"]["labels"] = [["negative"], "positive"]
    with pytest.raises(ParamsError, match=r"tasks\.sentiment\.labels\.0"):
        load_params(write(tmp_path, raw))
