"""Core-region masks: the type and its file format (``mask``), the rules that derive one from
importance (``rules``), composition across tasks (``compose``) and analysis (``analysis``)."""

from taso.masks.analysis import compare, layer_profile, overlap
from taso.masks.compose import compose, cut_to_budget, intersection, merge_importance, union
from taso.masks.mask import (
    Mask,
    ModuleMask,
    check_fits,
    check_importance,
    load_for_model,
    mask_stats,
    read_mask_json,
    shape_mismatch,
)
from taso.masks.rules import RULES, derive_elementwise, derive_global, derive_mask, derive_rows_cols, random_like

__all__ = [
    "RULES",
    "Mask",
    "ModuleMask",
    "check_fits",
    "check_importance",
    "compare",
    "compose",
    "cut_to_budget",
    "derive_elementwise",
    "derive_global",
    "derive_mask",
    "derive_rows_cols",
    "intersection",
    "layer_profile",
    "load_for_model",
    "mask_stats",
    "merge_importance",
    "overlap",
    "random_like",
    "read_mask_json",
    "shape_mismatch",
    "union",
]
