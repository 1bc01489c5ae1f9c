"""Cells of a results table (mean ± std over seeds) and paired-by-seed gaps, marked where the seeds settle them."""

from __future__ import annotations

import math
import statistics


def cell(values: list[float], seeds: int = 0, signed: bool = False) -> str:
    """Mean ± std in percent; a cell that holds fewer than ``seeds`` runs says how many it holds."""
    if not values:
        return "—"
    spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    short = f" (n={len(values)})" if len(values) < seeds else ""
    # Rounding first and adding 0.0 turns a -0.0 into 0.0, so a gap under 0.05 points reads "+0.0".
    mean = round(100 * statistics.mean(values), 1) + 0.0
    return f"{mean:{'+' if signed else ''}.1f}{spread}{short}"


T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


BEYOND = "†"


SPREAD_NOTE = f"{BEYOND} the paired 95% t-interval over seeds excludes zero; unmarked gaps are within the seed spread."


def beyond_spread(diffs: list[float]) -> bool:
    """Whether the paired 95% t-interval of ``diffs`` excludes zero: a gap the seeds settle."""
    if len(diffs) < 2:
        return False
    half = T95[min(len(diffs) - 1, len(T95)) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return abs(statistics.mean(diffs)) > half


def gap(mine: dict[int, float], other: dict[int, float], seeds: int) -> str:
    """``mine`` minus ``other`` (main metric by seed), paired by seed, as mean ± std of the differences
    in points; marked † (``BEYOND``) where the paired 95% t-interval excludes zero."""
    diffs = [mine[k] - other[k] for k in sorted(mine.keys() & other.keys())]
    return cell(diffs, seeds, signed=True) + (f" {BEYOND}" if beyond_spread(diffs) else "")
