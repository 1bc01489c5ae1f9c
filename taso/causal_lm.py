"""Instruction data for causal LMs: answer-only loss, option log-likelihoods and greedy generation.

An instruction example is ``{id, prompt, target, label}``: the model reads ``prompt`` (in the
tokenizer's chat template when it has one) and learns ``target`` followed by EOS; only the
target's tokens carry loss. Sequences are padded on the left, so every answer ends at the
last position and the LM head only has to run over the last few positions: the head of a
small LM (49k × 576 for SmolLM2) would otherwise cost a fifth of each step.

Choice tasks (yes/no, multiple choice) are scored by the summed log-likelihood of each
option's target; generation tasks (GSM8K) decode greedily and compare final numbers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from taso import metrics

log = logging.getLogger(__name__)

IGNORE = -100  # the label of a token that carries no loss (prompt and padding)


def prompt_text(tokenizer, prompt: str) -> str:
    """The prompt as the model sees it: one user turn of the chat template, else ``prompt`` and a newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    chat = bool(getattr(tokenizer, "chat_template", None))
    # A chat template writes its own special tokens; a plain prompt gets the tokenizer's (BOS).
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=not chat)["input_ids"]


def _target_ids(tokenizer, target: str, *, eos: bool) -> list[int]:
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else ids


def offered(labels: Sequence[str], prompt: str) -> list[int]:
    """Indices of the options a prompt offers: the labels it names as words ("answer format:
    answer1/answer2/answer3"), when it names two or more; else all of them. An ARC question
    with three choices is then never answered with a fourth."""
    named = [i for i, v in enumerate(labels) if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", prompt)]
    return named if len(named) >= 2 else list(range(len(labels)))


def _fit(prompt: list[int], target: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """Cut a too-long example to ``max_length``: the prompt loses its start, the answer is kept whole
    (unless the answer alone is longer, when it loses its end)."""
    if len(prompt) + len(target) <= max_length:
        return prompt, target, False
    target = target[: max_length - 1]
    return prompt[len(prompt) + len(target) - max_length :], target, True


def encode(examples: Sequence[dict], tokenizer, max_length: int) -> list[dict]:
    """Token ids of prompt + target + EOS with labels on the target only (``-100`` on the prompt)."""
    out, cut = [], 0
    for e in examples:
        prompt, target, was_cut = _fit(
            _prompt_ids(tokenizer, e["prompt"]), _target_ids(tokenizer, e["target"], eos=True), max_length
        )
        cut += was_cut
        ids = prompt + target
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prompt) + target})
    if cut:
        log.warning(
            "%d of %d examples are longer than %d tokens; their prompts lost their start", cut, len(out), max_length
        )
    return out


def collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a batch; positions count from each sequence's first real token."""
    longest = max(len(f["input_ids"]) for f in features)
    pad = [longest - len(f["input_ids"]) for f in features]
    batch = {
        "input_ids": torch.tensor([[pad_id] * n + f["input_ids"] for n, f in zip(pad, features)]),
        "attention_mask": torch.tensor([[0] * n + f["attention_mask"] for n, f in zip(pad, features)]),
    }
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([[IGNORE] * n + f["labels"] for n, f in zip(pad, features)])
    return batch


def _answer_logits(model: nn.Module, batch: Mapping[str, torch.Tensor], keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions only (the head never sees the prompt)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    return model(**inputs, logits_to_keep=keep, use_cache=False).logits.float()


def _answer_span(labels: torch.Tensor) -> int:
    """How many final positions hold every labelled token (left padding puts answers at the end)."""
    labelled = (labels != IGNORE).any(0).nonzero()
    return labels.shape[1] - int(labelled[0]) if labelled.numel() else 1


def _answer_window(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the answer positions plus the one before them, and the labels the first ``n - 1``
    of those predict (the last position predicts the token after the batch's sequences)."""
    labels = batch["labels"]
    span = min(_answer_span(labels) + 1, labels.shape[1])  # +1: the token before the answer predicts its first
    return _answer_logits(model, batch, span), labels[:, labels.shape[1] - span + 1 :]


def answer_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a left-padded batch (labels ``-100`` elsewhere).

    Equal to the model's own loss over the same labels, without computing logits for the prompt.
    """
    logits, target = _answer_window(model, batch)
    logits = logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


def _scored(prompt: list[int], target: list[int], max_length: int) -> dict:
    p, t, _ = _fit(prompt, target, max_length)
    return {"input_ids": p + t, "attention_mask": [1] * (len(p) + len(t)), "labels": [IGNORE] * len(p) + t}


def _target_logp(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-likelihood of each sequence's labelled tokens, and the log-probabilities of the
    token after each sequence."""
    logits, target = _answer_window(model, batch)
    logp = logits.log_softmax(-1)
    picked = logp[:, :-1].gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (target != IGNORE)).sum(-1), logp[:, -1]


def pick(scores: torch.Tensor, offered: Sequence[Sequence[int]]) -> list[int]:
    """Per row of ``[examples, options]`` scores, the best of the options that example offers."""
    allowed = torch.zeros_like(scores, dtype=torch.bool)
    for i, idx in enumerate(offered):
        allowed[i, list(idx)] = True
    return scores.masked_fill(~allowed, float("-inf")).argmax(-1).tolist()


def _common_prefix(seqs: Sequence[list[int]]) -> int:
    n = 0
    while all(len(s) > n and s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


@torch.no_grad()
def option_loglik(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    options: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 512,
) -> torch.Tensor:
    """``[len(prompts), len(options)]`` summed log-likelihood of each option's text after each prompt.

    No EOS is scored: options are compared as continuations. When the options differ only in
    their last token ("the correct answer is true" / "... false", "answer1".."answer5"), one
    pass per prompt scores them all; otherwise each (prompt, option) pair runs on its own.
    """
    targets = [_target_ids(tokenizer, o, eos=False) for o in options]
    shared = _common_prefix(targets)
    one_pass = all(len(t) == shared + 1 for t in targets)
    if one_pass:
        last = torch.tensor([t[-1] for t in targets])
        seqs = [_scored(_prompt_ids(tokenizer, p), targets[0][:shared], max_length - 1) for p in prompts]
    else:
        seqs = [_scored(_prompt_ids(tokenizer, p), t, max_length) for p in prompts for t in targets]
    scores = []
    for start in range(0, len(seqs), batch_size):
        batch = collate(seqs[start : start + batch_size], tokenizer.pad_token_id)
        if one_pass:
            prefix, after = _target_logp(model, batch)
            scores.append(prefix.unsqueeze(-1) + after[:, last])
        else:
            scores.append(_target_logp(model, batch)[0])
    return torch.cat(scores).view(len(prompts), len(options))


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    max_length: int = 512,
) -> list[str]:
    """Greedy completions of ``prompts`` (batched, left-padded), without the prompt or special tokens."""
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = [_fit(_prompt_ids(tokenizer, p), [], max_length)[0] for p in prompts[start : start + batch_size]]
        batch = collate([{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids], tokenizer.pad_token_id)
        new = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[:, batch["input_ids"].shape[1] :]
        out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def evaluate(
    model: nn.Module,
    tokenizer,
    examples: Sequence[dict],
    metric_names: Sequence[str],
    *,
    options: Sequence[str] | None = None,
    batch_size: int = 16,
    max_length: int = 512,
    max_new_tokens: int = 256,
) -> dict[str, float]:
    """Metrics of a causal LM on instruction examples: by option log-likelihood when the task has
    ``options`` (each example's ``label`` is the index of the right one, and its ``options`` the
    indices it may choose from), else by greedy generation (``label`` is the reference text)."""
    was_training = model.training
    model.eval()
    try:
        prompts = [e["prompt"] for e in examples]
        if options:
            scores = option_loglik(model, tokenizer, prompts, options, batch_size=batch_size, max_length=max_length)
            pred = pick(scores, [e.get("options", range(len(options))) for e in examples])
        else:
            pred = generate(
                model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=max_length
            )
    finally:
        model.train(was_training)
    gold = [e["label"] for e in examples]
    return {**metrics.compute(metric_names, pred, gold), "n_examples": len(gold)}
