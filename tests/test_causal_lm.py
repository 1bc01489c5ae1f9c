"""Causal LMs on instruction data: answer-only loss, option log-likelihoods, generation, scoring,
masked training and export, on a tiny Llama with a word-level tokenizer saved like a hub model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from taso import causal_lm, data
from taso.data import DataError, TaskSpec
from taso.importance import score_importance
from taso.injection import inject
from taso.masks import derive_rows_cols
from taso.methods import Taso
from taso.train import TrainConfig, train

TEMPLATE = "the correct answer is {}"
CHAT = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def parity_rows(n: int, seed: int = 0) -> list[dict]:
    """LLM-Adapters-format yes/no questions: is a number even?"""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        k = int(torch.randint(0, 20, (1,), generator=g))
        answer = "true" if k % 2 == 0 else "false"
        rows.append(
            {
                "instruction": f"is {k} even ?\n\nAnswer format : true / false",
                "input": "",
                "output": TEMPLATE.format(answer),
                "answer": answer,
            }
        )
    return rows


def sum_rows(n: int, seed: int = 0) -> list[dict]:
    """GSM8K-format questions whose answers end in ``#### <number>``."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        a, b = (int(x) for x in torch.randint(0, 10, (2,), generator=g))
        rows.append({"question": f"what is {a} plus {b} ?", "answer": f"{a} plus {b} is {a + b} #### {a + b}"})
    return rows


def tiny_lm_folder(path: Path, *, chat: bool = False, seed: int = 0) -> Path:
    """A 2-layer Llama and a word-level tokenizer (pad, unk, bos, eos) covering the test tasks' words."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tm
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = {"assistant", "user", ":", "answer1", "answer2", "answer3"}
    for r in parity_rows(200) + sum_rows(200):
        words.update(" ".join(str(v) for v in r.values()).split())
    words.update(str(i) for i in range(40))
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *sorted(words)])}
    backend = Tokenizer(tm.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    if chat:
        tok.chat_template = CHAT
    path.mkdir(parents=True)
    tok.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        initializer_range=0.2,  # large enough weights that a low-rank adapter moves the output quickly
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "chat"])
def lm(request, tmp_path_factory):
    """(model, tokenizer) of a tiny Llama, with and without a chat template."""
    from taso import pretrained

    folder = tiny_lm_folder(tmp_path_factory.mktemp("lm") / "tiny-llama", chat=request.param)
    return pretrained.load_model(str(folder), "causal_lm").eval(), pretrained.load_tokenizer(str(folder))


@pytest.fixture
def parity_dir(tmp_path) -> Path:
    (tmp_path / "train.json").write_text(json.dumps(parity_rows(64)))
    (tmp_path / "test.json").write_text(json.dumps(parity_rows(24, seed=1)))
    return tmp_path


def parity_spec(folder: Path, **kw) -> TaskSpec:
    return TaskSpec(
        name="parity",
        source=str(folder),
        task_type="causal_lm",
        text_fields=("instruction", "input"),
        label_field="answer",
        labels=("true", "false"),
        answer_template=TEMPLATE,
        splits={"train": "train.json", "eval": "test.json"},
        max_length=64,
        **kw,
    )


# --- data --------------------------------------------------------------------------------------


def test_instruction_files_read_as_prompt_target_and_label(parity_dir, tmp_path):
    rows = data.read_rows(parity_spec(parity_dir), "train")
    raw = json.loads((parity_dir / "train.json").read_text())
    assert [r["prompt"] for r in rows] == [r["instruction"] for r in raw]  # the empty input adds nothing
    assert [r["target"] for r in rows] == [r["output"] for r in raw]
    assert [("true", "false")[r["label"]] for r in rows] == [r["answer"] for r in raw]

    gsm = tmp_path / "gsm"
    gsm.mkdir()
    (gsm / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sum_rows(5)))
    spec = TaskSpec(
        name="sums",
        source=str(gsm),
        task_type="causal_lm",
        text_fields=("question",),
        metrics=("exact_match",),
        label_field="answer",
        splits={"train": "train.jsonl", "eval": "train.jsonl"},
    )
    rows = data.read_rows(spec, "train")
    assert rows[0]["target"] == rows[0]["label"] == sum_rows(5)[0]["answer"]


def test_an_answer_outside_the_options_names_row_and_column(parity_dir):
    raw = json.loads((parity_dir / "train.json").read_text())
    raw[3]["answer"] = "maybe"
    (parity_dir / "train.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"train.json: row 3, column 'answer': unknown answer 'maybe'"):
        data.read_rows(parity_spec(parity_dir), "train")


def test_a_prompt_that_lists_options_limits_the_choice():
    labels = ["answer1", "answer2", "answer3", "answer4"]
    assert causal_lm.offered(labels, "Answer1: x Answer2: y Answer3: z\n\nAnswer format: answer1/answer2/answer3") == [
        0,
        1,
        2,
    ]
    assert causal_lm.offered(labels, "pick one") == [0, 1, 2, 3]
    assert causal_lm.offered(["0", "1"], "I have 1 apple") == [0, 1]  # one stray mention is not a list of options


# --- encoding and loss -------------------------------------------------------------------------


def test_loss_falls_on_the_answer_and_eos_only(lm, parity_dir):
    _, tok = lm
    rows = data.read_rows(parity_spec(parity_dir), "train")[:4]
    for row, f in zip(rows, data.encode(rows, tok, 64)):
        n_prompt = sum(label == causal_lm.IGNORE for label in f["labels"])
        prompt_ids = tok(causal_lm.prompt_text(tok, row["prompt"]), add_special_tokens=not tok.chat_template)[
            "input_ids"
        ]
        assert f["input_ids"][:n_prompt] == prompt_ids
        answer = f["labels"][n_prompt:]
        assert answer == f["input_ids"][n_prompt:] and answer[-1] == tok.eos_token_id
        assert tok.decode(answer[:-1]) == row["target"]
        if tok.chat_template:
            assert tok.decode(prompt_ids).endswith("assistant :")


def test_a_long_prompt_loses_its_start_and_keeps_the_answer(lm):
    _, tok = lm
    ex = {"prompt": " ".join(["is"] * 50) + " 4 even ?", "target": "the correct answer is true", "label": 0}
    [f] = data.encode([ex], tok, 20)
    assert len(f["input_ids"]) == 20
    assert tok.decode([t for t in f["labels"] if t != causal_lm.IGNORE][:-1]) == ex["target"]
    text = tok.decode(f["input_ids"])
    assert "4 even ?" in text and text.endswith(ex["target"] + " </s>") and text.count("is") < 50


def test_answer_loss_equals_the_models_own_loss_and_gradient(lm, parity_dir):
    model, tok = lm
    rows = data.read_rows(parity_spec(parity_dir), "train")[:6]
    rows[1] = {**rows[1], "prompt": rows[1]["prompt"] + " really really", "target": "the correct answer is true true"}
    batch = data.collate(data.encode(rows, tok, 64), tok.pad_token_id)
    assert (batch["input_ids"][:, 0] == tok.pad_token_id).any(), "left padding should show in this batch"
    grads = []
    for loss_fn in (causal_lm.answer_loss, lambda m, b: m(**b).loss):
        model.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        grads.append((loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    model.zero_grad()


def test_left_padding_leaves_each_sequence_its_own_scores(lm):
    model, tok = lm
    prompts = ["is 4 even ?", "is 13 even ?\n\nAnswer format : true / false , is 13 even ?"]
    options = [TEMPLATE.format("true"), TEMPLATE.format("false")]
    together = causal_lm.option_loglik(model, tok, prompts, options)
    alone = torch.cat([causal_lm.option_loglik(model, tok, [p], options) for p in prompts])
    torch.testing.assert_close(together, alone)


def test_one_pass_over_shared_prefix_options_equals_scoring_each_option(lm):
    model, tok = lm
    prompts = ["is 4 even ?", "is 7 even ? answer1 answer2 answer3"]
    options = [TEMPLATE.format(v) for v in ("answer1", "answer2", "answer3")]  # differ in the last token only
    one_pass = causal_lm.option_loglik(model, tok, prompts, options, batch_size=1)
    each = torch.cat([causal_lm.option_loglik(model, tok, prompts, [o]) for o in options], dim=1)
    torch.testing.assert_close(one_pass, each)
    # The scores are log-likelihoods: the model's own loss times the answer length.
    seq = tok(causal_lm.prompt_text(tok, prompts[0]), add_special_tokens=not tok.chat_template)["input_ids"]
    target = tok(options[0], add_special_tokens=False)["input_ids"]
    labels = [causal_lm.IGNORE] * len(seq) + target
    batch = {"input_ids": torch.tensor([seq + target]), "labels": torch.tensor([labels])}
    with torch.no_grad():
        loss = model(**batch).loss
    torch.testing.assert_close(one_pass[0, 0], -loss * len(target))


def test_batched_greedy_generation_matches_one_prompt_at_a_time(lm):
    model, tok = lm
    prompts = ["what is 3 plus 4 ?", "is 12 even ? answer format : true / false", "what is 9 plus 9 ?"]
    batched = causal_lm.generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    assert batched == [causal_lm.generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert all(isinstance(t, str) for t in batched)


# --- scoring, masked training, export ----------------------------------------------------------


def test_scoring_instruction_batches_targets_the_blocks_not_the_lm_head(lm, parity_dir):
    model, tok = lm
    feats = data.encode(data.read_rows(parity_spec(parity_dir), "train"), tok, 64)
    imp = score_importance(model, data.iterate(feats, 8, tok.pad_token_id))
    names = {n.rsplit(".", 1)[-1] for n in imp.rows}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(imp.rows) == 14 and all(r.sum() > 0 for r in imp.rows.values())
    assert all(p.grad is None for p in model.parameters())


def test_masked_training_learns_the_task_and_exports_to_peft(lm, parity_dir, tmp_path):
    from peft import PeftModel

    from taso import pretrained

    model, tok = lm
    folder = Path(tok.name_or_path)
    spec = parity_spec(parity_dir)
    train_rows = data.read_rows(spec, "train")
    feats = data.encode(train_rows, tok, 64)
    student = pretrained.load_model(str(folder), "causal_lm")
    mask = derive_rows_cols(score_importance(student, data.iterate(feats, 8, tok.pad_token_id)), 0.5)
    inject(student, mask, r=2, alpha=4.0)
    before = causal_lm.evaluate(student, tok, train_rows, ["accuracy"], options=spec.options)["accuracy"]
    result = train(
        student, feats, TrainConfig(lr=3e-2, epochs=6, batch_size=8), pad_id=tok.pad_token_id, progress=False
    )
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 2
    after = causal_lm.evaluate(student, tok, train_rows, ["accuracy"], options=spec.options)
    assert after["accuracy"] > before and after["n_examples"] == 64

    Taso().export(student, tmp_path / "adapter", base_model=str(folder), task_type="CAUSAL_LM")
    loaded = PeftModel.from_pretrained(
        pretrained.load_model(str(folder), "causal_lm"), str(tmp_path / "adapter")
    ).eval()
    student.eval()
    batch = data.collate(feats[:8], tok.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, student(**inputs).logits, atol=1e-5, rtol=1e-5)
    prompts = [r["prompt"] for r in train_rows[:4]]
    assert causal_lm.generate(loaded, tok, prompts, max_new_tokens=6) == causal_lm.generate(
        student, tok, prompts, max_new_tokens=6
    )


def test_generation_tasks_are_scored_by_the_final_number(lm):
    model, tok = lm
    rows = [{"prompt": r["question"], "target": r["answer"], "label": r["answer"]} for r in sum_rows(4)]
    scores = causal_lm.evaluate(model, tok, rows, ["exact_match"], max_new_tokens=4)
    generated = causal_lm.generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=4)
    from taso.metrics import exact_match

    assert scores == {"exact_match": exact_match(generated, [r["label"] for r in rows]), "n_examples": 4}
