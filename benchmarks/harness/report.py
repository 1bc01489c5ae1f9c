"""The GLUE benchmark's markdown tables and plot, from the records of ``harness.store``: the
report table, TASO's paired gaps, step-time and memory cost, the sweep so far and the transfer table."""

from __future__ import annotations

import statistics
from pathlib import Path

from harness.sweep import chosen
from harness.tables import SPREAD_NOTE, cell, gap
from taso import data
from taso.io import atomic_path


def label(s: dict) -> str:
    # The head's own rate and the importance variants' knobs show only where a setting has them
    # (the recorded runs do not).
    head = f", head lr {s['head_lr']:g}" if "head_lr" in s else ""
    head += f", {s['head']} head" if "head" in s else ""
    if s["method"] in ("taso", "random"):
        names = ("p", "rank", "gamma", "warmup", "warmup_lr", "rule", "calibration", "statistic", "unit")
        knobs = ", ".join(f"{k} {s[k]}" for k in names if k in s)
        return f"{s['method']} (lr {s['lr']:g}{head}; {knobs})"
    if s["method"] == "losia":
        start = "TASO's mask" if s["start"] == "mask" else s["start"]
        return f"losia (lr {s['lr']:g}{head}; p {s['p']:g}, start {start})"
    return f"{s['method']} (lr {s['lr']:g}{head})"


def table(
    report: list[dict],
    settings: dict[str, dict],
    specs: dict[str, data.TaskSpec],
    tasks,
    seeds: int,
    chance=None,
    references: list[dict] = (),
) -> str:
    """Each method's dev metrics (mean ± std over seeds) and trainable parameters, then the reference
    rows a trained method must beat: ``references`` (the base model with no training, one record per
    task from ``harness.probe``) and ``chance`` (task -> majority-class accuracy, None for a regression)."""
    head = "| method | trainable (adapter + head [+ backbone]) | " + " | ".join(
        f"{t} ({'/'.join(specs[t].metrics)})" for t in tasks
    )
    lines = [head + " |", "|---|---:|" + "---:|" * len(tasks)]
    for s in settings.values():
        runs = [r for r in report if r["setting"] == s]
        if not runs:
            continue
        t = runs[0]["trainable"]
        cells = []
        for task in tasks:
            mine = [r for r in runs if r["task"] == task]
            cells.append(" / ".join(cell([r[m] for r in mine], seeds) for m in specs[task].metrics))
        budget = f"{t['adapter']:,} + {t['head']:,}" + (f" + {t['backbone']:,}" if t["backbone"] else "")
        lines.append(f"| {label(s)} | {budget} | " + " | ".join(cells) + " |")
    # One row per way of reading the untrained model: the default head's, and each head a setting names.
    for head in sorted(dict.fromkeys(r["setting"].get("head") for r in references), key=lambda h: h is not None):
        by_task = {r["task"]: r for r in references if r["setting"].get("head") == head}
        cells = [
            " / ".join(cell([by_task[t][m]]) for m in specs[t].metrics) + f" ({by_task[t]['reference']})"
            if t in by_task
            else "—"
            for t in tasks
        ]
        read = f", {head} head" if head else ""
        lines.append(f"| base model, no training{read} (reference) | 0 | " + " | ".join(cells) + " |")
    if chance:
        cells = [cell([chance[t]]) if chance.get(t) is not None else "—" for t in tasks]
        lines.append("| majority class (reference, accuracy) | — | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_seed(runs: list[dict], task: str) -> dict[int, float]:
    """``task``'s main metric in ``runs``, by seed."""
    return {r["seed"]: r["main"] for r in runs if r["task"] == task}


def paired(
    report: list[dict], settings: dict[str, dict], specs, tasks, seeds: int, ref: str = "taso", note: bool = True
) -> str:
    """``ref``'s main dev metric minus each other method's, paired by seed (the same seed shares the
    data order and head initialisation); see ``gap``. ``note``: end with what † means."""
    head = f"| {ref} minus | " + " | ".join(f"{t} ({specs[t].metrics[0]})" for t in tasks) + " |"
    lines = [head, "|---|" + "---:|" * len(tasks)]
    mine = [r for r in report if r["setting"] == settings[ref]]
    for name, s in settings.items():
        if name == ref:
            continue
        other = [r for r in report if r["setting"] == s]
        cells = [gap(by_seed(mine, t), by_seed(other, t), seeds) for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\n" + SPREAD_NOTE if note else "")


def cost(report: list[dict], settings: dict[str, dict], tasks, ref: str = "lora-r1") -> str:
    """Each method's median step time as a multiple of ``ref``'s (paired by seed, median over seeds)
    and its median peak RSS, per task. Runs share the cores, so the figures are indicative only."""
    lines = ["| method: step time × " + ref + ", peak RSS MB | " + " | ".join(tasks) + " |"]
    lines.append("|---|" + "---:|" * len(tasks))
    base = {(r["task"], r["seed"]): r["median_step_seconds"] for r in report if r["setting"] == settings[ref]}
    for name, s in settings.items():
        cells = []
        for t in tasks:
            runs = [r for r in report if r["setting"] == s and r["task"] == t]
            ratios = [r["median_step_seconds"] / base[t, r["seed"]] for r in runs if (t, r["seed"]) in base]
            rss = [r["peak_rss_mb"] for r in runs]
            cells.append(f"{statistics.median(ratios):.2f}× / {statistics.median(rss):,.0f}" if ratios else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(done: list[dict], planned: list[dict], specs, tasks, majority: dict[str, float]) -> str:
    """The sweep so far: each planned setting's held-out main metric per task, "…" where a run is
    still to come, and a mark on each method's current choice; ``majority`` (task -> majority-class
    accuracy on the held-out slice) is the reference row."""
    picks = chosen(done, tasks, planned)
    head = "| setting | " + " | ".join(f"{t} held-out {specs[t].metrics[0]}" for t in tasks) + " | mean |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 1)]
    majority = [cell([majority[t]]) for t in tasks]
    lines.append("| majority class (reference) | " + " | ".join(majority) + " | |")
    for s in planned:
        got = {r["task"]: r["main"] for r in done if r["phase"] == "sweep" and r["setting"] == s}
        cells = [f"{100 * got[t]:.1f}" if t in got else "…" for t in tasks]
        mean = f"{100 * statistics.mean(got.values()):.1f}" if set(tasks) <= set(got) else "…"
        mark = " **(chosen)**" if picks.get(s["method"]) == s else ""
        lines.append(f"| {label(s)}{mark} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def transfer_settings(taso: dict, b: str, tasks) -> list[dict]:
    """Task ``b``'s masks for the transfer table, all at the chosen TASO setting: its own, each other
    task's, the others' union cut to its own counts (with two or more others), and a random one."""
    others = [a for a in tasks if a != b]
    out = [taso, *({**taso, "method": "transfer", "source": a} for a in others)]
    if len(others) > 1:
        out.append({**taso, "method": "union", "sources": others})
    return [*out, {**taso, "method": "random"}]


def condition(s: dict) -> str:
    names = {"taso": "own mask", "union": "union of the others, cut to own counts", "random": "random, own counts"}
    return names.get(s["method"]) or f"mask of {s['source']}"


def transfer_table(report: list[dict], taso: dict, specs, tasks, seeds: int) -> str:
    """Task B's main dev metric (mean ± std over seeds) for each mask it trained with; then each
    borrowed mask's metric minus B's own, paired by seed (see ``gap``)."""
    got: dict[str, dict[str, dict[int, float]]] = {}
    for b in tasks:
        for s in transfer_settings(taso, b, tasks):
            got.setdefault(condition(s), {})[b] = by_seed([r for r in report if r["setting"] == s], b)
    order = [
        "own mask",
        *(f"mask of {a}" for a in tasks),
        "union of the others, cut to own counts",
        "random, own counts",
    ]
    names = [n for n in order if n in got]
    head = " | ".join(f"{b} ({specs[b].metrics[0]})" for b in tasks) + " |"
    lines = ["| mask \\ task B | " + head, "|---|" + "---:|" * len(tasks)]
    for name in names:
        lines.append(
            f"| {name} | " + " | ".join(cell(list(got[name].get(b, {}).values()), seeds) for b in tasks) + " |"
        )
    own = got.get("own mask", {})
    diffs = ["| mask minus own mask | " + head, "|---|" + "---:|" * len(tasks)]
    for name in names[1:]:
        cells = [gap(got[name][b], own.get(b, {}), seeds) if b in got[name] else "—" for b in tasks]
        diffs.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(diffs) + "\n\n" + SPREAD_NOTE


def plot(report: list[dict], settings: dict[str, dict], specs, tasks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, s in settings.items():
            runs = [r for r in report if r["setting"] == s and r["task"] == task]
            if not runs:
                continue
            n = sum(runs[0]["trainable"].values())
            values = [100 * r["main"] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.errorbar(n, statistics.mean(values), yerr=spread, fmt="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_title(f"{task} ({specs[task].metrics[0]})")
        ax.set_xlabel("trainable parameters")
    finish(fig, axes, path)


def finish(fig, axes, path: Path) -> None:
    """Label, legend and save a row of metric panels (atomically), then free the figure."""
    import matplotlib.pyplot as plt

    axes[0][0].set_ylabel("dev metric (%)")
    # The legend goes on the last panel, with the handles of the fullest one (a partial report may
    # have no runs of the last task yet).
    handles, names = max((ax.get_legend_handles_labels() for ax in axes[0]), key=lambda hl: len(hl[0]))
    axes[0][-1].legend(handles, names, fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def head_table(
    runs: list[dict], tried: dict[str, list[dict]], specs, tasks, majority: dict[str, float], seeds: int = 1
) -> str:
    """Held-out main metric of each method with its head at each tried rate ("method's" for its own),
    the mean over tasks, and the rate with the best mean over methods and tasks: the one to use.
    With several ``seeds`` a cell is their mean, and complete only once every seed is in;
    ``majority`` (task -> majority-class accuracy on the slice) is the reference row."""
    over = f" (mean of {seeds} seeds)" if seeds > 1 else ""
    lines = [
        "| method | head lr | " + " | ".join(f"{t} held-out {specs[t].metrics[0]}{over}" for t in tasks) + " | mean |"
    ]
    lines.append("|---|---:|" + "---:|" * (len(tasks) + 1))
    lines.append("| majority class (reference) | | " + " | ".join(cell([majority[t]]) for t in tasks) + " | |")
    by_rate: dict[str, list[float]] = {}
    for method, settings in tried.items():
        for s in settings:
            got: dict[str, list[float]] = {}
            for r in runs:
                if r["setting"] == s:
                    got.setdefault(r["task"], []).append(r["main"])
            means = {t: statistics.mean(got[t]) for t in tasks if len(got.get(t, ())) == seeds}
            rate = f"{s['head_lr']:g}" if "head_lr" in s else "method's"
            cells = [f"{100 * means[t]:.1f}" if t in means else "…" for t in tasks]
            mean = "…"
            if len(means) == len(tasks):
                by_rate.setdefault(rate, []).extend(means.values())
                mean = f"{100 * statistics.mean(means.values()):.1f}"
            lines.append(f"| {method} | {rate} | " + " | ".join(cells) + f" | {mean} |")
    complete = {r: v for r, v in by_rate.items() if len(v) == len(tried) * len(tasks)}
    if complete:
        best = max(complete, key=lambda r: statistics.mean(complete[r]))
        lines += [
            "",
            f"Best mean over methods and tasks: head lr {best} ({100 * statistics.mean(complete[best]):.1f}).",
        ]
    return "\n".join(lines)
