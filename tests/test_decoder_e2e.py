"""End to end on a decoder: the real `dvc repro` runs the six stages (and compose, analyze) for a
choice task and a generation task on a tiny Llama saved like a hub model; the registry's pyfunc
model then answers prompts."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from test_causal_lm import TEMPLATE, parity_rows, sum_rows, tiny_lm_folder
from test_pipeline_e2e import ROOT, always, copy_project, ran, sh
from test_reliability_process import dvc_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git repo of this project on the tiny Llama with two decoder tasks, after one `dvc repro`."""
    base = tmp_path_factory.mktemp("decoder")
    model = tiny_lm_folder(base / "tiny-llama", chat=True)
    for task, rows, name in (("parity", parity_rows, "{}.json"), ("sums", sum_rows, "{}.jsonl")):
        (base / task).mkdir()
        for split, n, seed in (("train", 48, 0), ("test", 12, 1)):
            items = rows(n, seed)
            text = json.dumps(items) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in items)
            (base / task / name.format(split)).write_text(text)
    repo = copy_project(base / "repo")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = {**raw["model"], "base": str(model), "max_length": 48}
    raw["tasks"] = {
        "parity": {
            "source": str(base / "parity"),
            "task_type": "causal_lm",
            "text_fields": ["instruction", "input"],
            "label_field": "answer",
            "labels": ["true", "false"],
            "answer_template": TEMPLATE,
            "splits": {"train": "train.json", "eval": "test.json"},
            "mask_source": "own",
        },
        "sums": {
            "source": str(base / "sums"),
            "task_type": "causal_lm",
            "text_fields": ["question"],
            "label_field": "answer",
            "metrics": ["exact_match"],
            "splits": {"train": "train.jsonl", "eval": "test.jsonl"},
            "mask_source": "own",
        },
    }
    raw["compositions"] = {"both": {"op": "union", "of": ["parity", "sums"]}}
    raw["calibrate"]["n"] = 16
    raw["train"] |= {"max_steps": 6, "lr": 0.03, "checkpoint_every": 3}
    raw["evaluate"] |= {"batch_size": 8, "max_new_tokens": 8}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = dvc_env()
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    sh(["dvc", "config", "--local", "core.site_cache_dir", str(base / "dvc-site")], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "init"], repo, env)
    return repo, env, sh(["dvc", "repro"], repo, env), model


def test_repro_runs_every_stage_of_both_decoder_tasks(project):
    repo, _, first, _ = project
    for task in ("parity", "sums"):
        for stage in ("calibrate", "score", "derive-mask", "train", "evaluate", "promote"):
            assert f"Running stage '{stage}@{task}'" in first.stdout
        art = repo / "artifacts" / task
        adapter = json.loads((art / "adapter" / "adapter_config.json").read_text())
        assert adapter["task_type"] == "CAUSAL_LM"
        assert {m.rsplit(".", 1)[-1] for m in adapter["target_modules"]} <= {
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
        }  # fmt: skip
        assert json.loads((art / "train.json").read_text())["trainable_head"] == 0  # lm_head stays frozen
    parity = json.loads((repo / "artifacts" / "parity" / "metrics.json").read_text())
    assert set(parity) >= {"accuracy", "n_examples"} and parity["n_examples"] == 12 and 0 <= parity["accuracy"] <= 1
    sums = json.loads((repo / "artifacts" / "sums" / "metrics.json").read_text())
    assert set(sums) >= {"exact_match", "n_examples"} and sums["n_examples"] == 12
    assert (repo / "artifacts" / "compositions" / "both" / "mask" / "mask.safetensors").is_file()


def test_the_registered_decoder_adapter_answers_through_pyfunc(project, monkeypatch):
    import mlflow
    from peft import PeftModel

    from taso import causal_lm, pretrained

    repo, _, _, model_dir = project
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading a model prepends its code folder
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    tok = pretrained.load_tokenizer(str(model_dir))
    prompts = [r["instruction"] for r in parity_rows(6, seed=2)]
    peft = PeftModel.from_pretrained(
        pretrained.load_model(str(model_dir), "causal_lm"), str(repo / "artifacts" / "parity" / "adapter")
    ).eval()
    scores = causal_lm.option_loglik(peft, tok, prompts, [TEMPLATE.format(v) for v in ("true", "false")])
    expected = [("true", "false")[i] for i in scores.argmax(-1).tolist()]
    chooser = mlflow.pyfunc.load_model("models:/taso-parity@champion")
    assert chooser.predict(prompts) == expected
    assert chooser.predict({"prompt": prompts[:2]}) == expected[:2]

    generator = mlflow.pyfunc.load_model("models:/taso-sums@champion")
    questions = [r["question"] for r in sum_rows(3, seed=5)]
    peft = PeftModel.from_pretrained(
        pretrained.load_model(str(model_dir), "causal_lm"), str(repo / "artifacts" / "sums" / "adapter")
    ).eval()
    assert generator.predict(questions, params={"max_new_tokens": 5}) == causal_lm.generate(
        peft, tok, questions, max_new_tokens=5
    )
    assert all(isinstance(t, str) for t in generator.predict(questions[:1]))  # the default max_new_tokens


def test_second_repro_reruns_nothing(project):
    repo, env, _, _ = project
    again = sh(["dvc", "repro"], repo, env)
    assert ran(again.stdout) == always(repo)  # the checks of params and data; they write nothing new
