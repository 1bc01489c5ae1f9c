"""The GLUE sweep's plan: each method's learning-rate grid (grown past a winning end by one rule
for every method), TASO's knobs one at a time, their combination, and each method's choice.

A setting is a plain dict (``method``, ``lr`` and, for TASO-family methods, its knobs); runs are
the records of ``harness.store``, each with its ``phase``, ``task``, ``setting`` and ``main`` metric."""

from __future__ import annotations

import json
import math
import statistics

LR_GRID = {  # in the order the sweep runs them: the headline comparison first, full fine-tuning last
    "lora-r1": (3e-4, 1e-3, 3e-3),
    "taso": (1e-3, 3e-3, 1e-2),
    "head": (1e-3, 3e-3, 1e-2),
    "lora-r8": (1e-4, 3e-4, 1e-3),
    "full": (2e-5, 5e-5, 1e-4),
}
# Methods a protocol with the pooled head adds (the recorded sweep predates them), swept under it.
ADDED_GRID = {"losia": (1e-4, 3e-4, 1e-3)}  # LoSiA trains weights directly: full fine-tuning's range and up
# The pooled head's own rate, chosen by the head phase (docs/head-glue.md). LoSiA is swept under the
# pooled head only, so its learning rate is chosen with the head at this rate, as the report runs it.
POOLED_HEAD_LR = 0.03
LOSIA_BASE = {"p": 0.125, "start": "random", "head_lr": POOLED_HEAD_LR}  # the paper's rank factor, random first blocks
# MiniLM: Σ int(m/16)·int(n/16) over the targets equals Σ (m + n), LoRA r=1's count exactly.
LOSIA_R1_P = 0.0625
MAX_EXTEND = 2  # rates a method's grid may grow by past a winning end, so no method is cut off by its grid
TASO_BASE = {"p": 0.25, "rank": 1, "gamma": 0.5, "warmup": 0, "rule": "rows_cols", "calibration": 256}
TASO_VARIANTS = (  # one knob at a time, at the base's best learning rate
    {"warmup": 200},  # head-only steps before scoring, so gradients are not those of a random head
    {"rank": 4},  # rank 4 at p 0.25: LoRA r=1's budget
    {"p": 0.5},  # half of LoRA r=1's budget at rank 1
    {"gamma": 0.0},
    {"gamma": 1.0},
    {"rule": "global"},  # rows and columns ranked across matrices
    {"calibration": 1024},
)


def setting(method: str, lr: float, **knobs) -> dict:
    base = TASO_BASE if method in ("taso", "random") else LOSIA_BASE if method == "losia" else {}
    return {"method": method, "lr": lr, **base, **knobs}


def grids_of(protocol: dict) -> dict[str, tuple[float, ...]]:
    """The methods a protocol sweeps: the recorded ones, and LoSiA where the head is pooled."""
    return {**LR_GRID, **ADDED_GRID} if protocol.get("pooling") else dict(LR_GRID)


def losia_variants(settings: dict[str, dict]) -> dict[str, dict]:
    """LoSiA at LoRA r=1's parameter count, and warm-started from the chosen TASO setting's mask,
    both at LoSiA's chosen rate (the report's extra rows; none until LoSiA and TASO are chosen)."""
    if "losia" not in settings or "taso" not in settings:
        return {}
    losia, taso = settings["losia"], settings["taso"]
    region = {k: taso[k] for k in ("p", "warmup", "rule", "calibration")}
    return {
        "losia-r1budget": {**losia, "p": LOSIA_R1_P},
        "losia-warm": {**losia, "start": "mask", "region": region},
    }


def sweep_settings(done: list[dict], tasks, grids=LR_GRID, variants=TASO_VARIANTS, extend=MAX_EXTEND) -> list[dict]:
    """The sweep's settings in the order to run them. A method's learning-rate grid grows past
    whichever end wins (see :func:`lr_grid`); the TASO variants follow once TASO's grid is settled,
    at its best rate."""
    out = []
    for method, grid in grids.items():
        lrs, top = lr_grid(done, method, grid, tasks, extend)
        out += [setting(method, lr) for lr in lrs]
        if method == "taso" and top is not None:
            tried = [setting("taso", top, **v) for v in variants]
            out += tried
            both = combined(done, tasks, setting("taso", top), tried)
            out += [both] if both else []
    return out


def combined(done: list[dict], tasks, base: dict, variants: list[dict]) -> dict | None:
    """One setting with the knobs of every variant that beat ``base``, the largest gain first: a knob
    a better variant has set already is skipped, and so is one that would take the adapter past
    LoRA r=1's budget (p × rank > 1). None until every variant has run on every task, or when
    fewer than two knobs combine (the setting would be one already run)."""
    scores = means(done, tasks, lambda s: s == base or s in variants)
    if as_key(base) not in scores or any(as_key(v) not in scores for v in variants):
        return None
    gain = {as_key(v): scores[as_key(v)] - scores[as_key(base)] for v in variants}
    gains = sorted((v for v in variants if gain[as_key(v)] > 0), key=lambda v: -gain[as_key(v)])
    out, knobs = dict(base), set()
    for v in gains:
        (knob,) = (k for k in v if v[k] != base[k])
        trial = {**out, knob: v[knob]}
        if knob not in knobs and trial["p"] * trial["rank"] <= 1:
            out, knobs = trial, knobs | {knob}
    return out if len(knobs) > 1 else None


def lr_grid(done: list[dict], method: str, grid, tasks, extend: int) -> tuple[list[float], float | None]:
    """``method``'s learning rates so far, and the best of them once they are settled (else None): every rate has run on every
    task and the best is inside the grid (or the grid has grown by ``extend`` points already). A best
    rate at an end adds the next rate on the 1-3-10 ladder past it, the same rule for every method."""
    lrs = list(grid)
    for grown in range(extend + 1):
        scores = means(done, tasks, lambda s: s in [setting(method, lr) for lr in lrs])
        if len(scores) < len(lrs):
            return lrs, None
        top = json.loads(max(sorted(scores), key=scores.get))["lr"]
        tied = list(scores.values()).count(max(scores.values())) > 1  # an end that only ties does not grow the grid
        if grown == extend or tied or top not in (lrs[0], lrs[-1]) or len(lrs) == 1:
            return lrs, top
        if top == lrs[-1]:
            lrs.append(ladder(top, +1))
        else:
            lrs.insert(0, ladder(top, -1))
    raise AssertionError("unreachable")


def ladder(lr: float, step: int) -> float:
    """The learning rate ``step`` rungs from ``lr`` on the ladder 1e-5, 3e-5, 1e-4, 3e-4, ..."""
    rung = round(2 * math.log10(lr)) + step
    return float(f"{(3 if rung % 2 else 1) * 10 ** (rung // 2):.0e}")


def as_key(s: dict) -> str:
    """A setting as sorted JSON: the same setting gives the same string however its keys were ordered."""
    return json.dumps(s, sort_keys=True)


def means(done: list[dict], tasks, where) -> dict[str, float]:
    """The mean main metric over ``tasks`` of each sweep setting ``where`` accepts that has run on
    every task, keyed by the setting as sorted JSON."""
    scores: dict[str, dict[str, float]] = {}
    for r in done:
        if r["phase"] == "sweep" and where(r["setting"]):
            scores.setdefault(as_key(r["setting"]), {})[r["task"]] = r["main"]
    return {k: statistics.mean(v[t] for t in tasks) for k, v in scores.items() if set(tasks) <= set(v)}


def best(done: list[dict], method: str, tasks, where=lambda s: True) -> dict | None:
    """The sweep setting of ``method`` with the highest mean main metric over ``tasks``."""
    scores = means(done, tasks, lambda s: s["method"] == method and where(s))
    return (
        json.loads(max(sorted(scores), key=scores.get)) if scores else None
    )  # sorted: ties break the same way every time


def chosen(done: list[dict], tasks, planned: list[dict], methods=LR_GRID) -> dict[str, dict]:
    """Each of ``methods``' winning setting among the ``planned`` sweep settings (TASO's over its base,
    variants and their combination; runs of settings the sweep no longer plans do not count), and
    a random mask with the chosen TASO setting's counts."""
    out = {m: best(done, m, tasks, lambda s: s in planned) for m in methods}
    if out.get("taso"):
        out["random"] = {**out["taso"], "method": "random"}
    return {m: s for m, s in out.items() if s}
