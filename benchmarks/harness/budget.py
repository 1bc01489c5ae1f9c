"""The budget curve: does the region matter? TASO's mask, IMP's and a random one at several kept
fractions p (the same rank, so parameters grow with p), beside PEFT LoRA and head-only training.

A setting here is the report's chosen TASO setting with ``p`` (and, for IMP, its search knobs)
changed; at the report's own p the TASO and random settings are the report's, so those runs are
shared.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from harness.report import by_seed, finish
from harness.tables import SPREAD_NOTE, cell, gap

REFERENCES = ("lora-r1", "lora-r8", "head")
IMP = {"q": 0.5, "steps": 50, "imp_rule": "global"}  # taso.config.ImpConfig's defaults, the pipeline's
# TASO's importance variants, each a pipeline knob (score.statistic, mask.unit, score.head_warmup_lr):
# LoSiA's sensitivity × uncertainty score taken once; q/k/v rows kept in whole attention heads; and the
# head warmed up before scoring at the rate it trains at (where the setting has a rate of its own and
# a warm-up): a head reading a unit-length sentence vector barely moves in 200 steps at 1e-3, so the
# gradients that rank rows and columns are close to a random head's.
VARIANTS = {
    "taso-sensitivity": lambda taso: {"statistic": "sensitivity"},
    "taso-heads": lambda taso: {"unit": "head"},
    "taso-warm-head": lambda taso: {"warmup_lr": taso["head_lr"]} if taso.get("head_lr") and taso["warmup"] else None,
}
REGIONS = ("taso", "imp", "random", *VARIANTS)
GAPS = (
    ("taso", "random"),
    ("imp", "random"),
    ("taso", "imp"),
    *((v, "taso") for v in VARIANTS),
)


def variant_settings(taso: dict) -> dict[str, dict]:
    """TASO's chosen setting with each importance variant's knob changed (a variant that would change
    nothing in ``taso`` is left out)."""
    return {name: {**taso, **knob} for name, make in VARIANTS.items() if (knob := make(taso))}


def settings(chosen: dict[str, dict], ps: list[float], variants: bool = False) -> dict[tuple[str, float | None], dict]:
    """Every setting of the curve by (method, p): the region methods at each p (TASO's importance
    variants too, with ``variants``), the references once."""
    taso = chosen["taso"]
    out: dict[tuple[str, float | None], dict] = {}
    for p in ps:
        out["taso", p] = {**taso, "p": p}
        out["random", p] = {**taso, "p": p, "method": "random"}
        out["imp", p] = {**taso, "p": p, "method": "imp", **IMP}
        if variants:
            out |= {(name, p): {**s, "p": p} for name, s in variant_settings(taso).items()}
    for name in REFERENCES:
        if name in chosen:
            out[name, None] = chosen[name]
    return out


def _runs(report: list[dict], s: dict, task: str) -> list[dict]:
    return [r for r in report if r["setting"] == s and r["task"] == task]


def table(report: list[dict], curve: dict, specs, tasks, seeds: int) -> str:
    """Main dev metric (mean ± std over seeds) and adapter parameters of every point of the curve,
    then the paired-by-seed gaps between the region methods at each p, then the wall time each
    spends finding its region (median over runs)."""
    lines = [
        "| method | p | " + " | ".join(f"{t} ({specs[t].metrics[0]}) | {t} params" for t in tasks) + " |",
        "|---|---:|" + "---:|---:|" * len(tasks),
    ]
    for (name, p), s in curve.items():
        cells = []
        for t in tasks:
            runs = _runs(report, s, t)
            params = f"{runs[0]['trainable']['adapter']:,}" if runs else "—"
            cells.append(f"{cell([r['main'] for r in runs], seeds)} | {params}")
        lines.append(f"| {name} | {'—' if p is None else f'{p:g}'} | " + " | ".join(cells) + " |")
    ps = sorted({p for _, p in curve if p is not None})
    lines += ["", "| gap (points) | p | " + " | ".join(tasks) + " |", "|---|---:|" + "---:|" * len(tasks)]
    for a, b in GAPS:
        for p in ps:
            if (a, p) not in curve or (b, p) not in curve:
                continue
            cells = [
                gap(by_seed(_runs(report, curve[a, p], t), t), by_seed(_runs(report, curve[b, p], t), t), seeds)
                for t in tasks
            ]
            lines.append(f"| {a} − {b} | {p:g} | " + " | ".join(cells) + " |")
    lines += ["", SPREAD_NOTE, "", "| finding the region: median seconds (runs) | " + " | ".join(tasks) + " |"]
    lines.append("|---|" + "---:|" * len(tasks))
    for name in ("taso", "imp"):
        cells = []
        for t in tasks:
            secs = [r["region_seconds"] for (n, p), s in curve.items() if n == name for r in _runs(report, s, t)]
            secs = [x for x in secs if x is not None]
            cells.append(f"{statistics.median(secs):,.0f} ({len(secs)})" if secs else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + cpu_time(report, curve, tasks)


def cpu_time(report: list[dict], curve: dict, tasks) -> str:
    """What the curve's runs cost: their wall time (search and training) summed, and the cores it held."""
    runs = [r for s in curve.values() for t in tasks for r in _runs(report, s, t)]
    seconds = sum(r.get("train_seconds", 0.0) + (r.get("region_seconds") or 0.0) for r in runs)
    shapes = sorted({(r.get("jobs", 1), r.get("threads", 1)) for r in runs})
    held = ", ".join(
        f"{j} job{'s' * (j > 1)} of {t} thread{'s' * (t > 1)}{', side by side' * (j > 1)}" for j, t in shapes
    )
    return f"The {len(runs)} runs above took {seconds / 3600:.1f} h of wall time summed over runs, finding and training ({held or 'none'})."


def plot(report: list[dict], curve: dict, specs, tasks, path: Path) -> None:
    """One panel per task: main dev metric against adapter parameters (log x), a line per region
    method over p, a point per reference (head-only at the left edge: it trains no adapter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        smallest = min(
            (
                r["trainable"]["adapter"]
                for s in curve.values()
                for r in _runs(report, s, task)
                if r["trainable"]["adapter"]
            ),
            default=1,
        )
        for name in (*REGIONS, *REFERENCES):
            points = []
            for (n, _p), s in curve.items():
                runs = _runs(report, s, task)
                if n != name or not runs:
                    continue
                values = [100 * r["main"] for r in runs]
                x = runs[0]["trainable"]["adapter"] or smallest / 2
                points.append((x, statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0))
            if points:
                xs, ys, es = zip(*sorted(points))
                ax.errorbar(xs, ys, yerr=es, fmt="o-" if name in REGIONS else "s", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_title(f"{task} ({specs[task].metrics[0]})")
        ax.set_xlabel("adapter parameters (head-only: left edge)")
    finish(fig, axes, path)
