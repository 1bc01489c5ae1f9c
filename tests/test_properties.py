"""Properties over random shapes and densities (hypothesis): masks stay canonical, updates stay inside them.

- derive (rows_cols, global, elementwise) → save → load → union / intersection never gives an
  index out of range, duplicated or unsorted, and keeps every module and shape;
- masked training (AdamW on a random regression target) leaves ΔW exactly zero outside rows × cols;
- composition is deterministic: same masks → same digest, in any order.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from taso.importance import Importance
from taso.layer import MaskedLoraLinear
from taso.masks import Mask, ModuleMask, derive_mask, intersection, union

FAST = settings(max_examples=50, deadline=None)

dims = st.integers(min_value=1, max_value=24)
shapes = st.dictionaries(st.sampled_from(["l0.q", "l0.v", "l1.mlp", "l1.out"]), st.tuples(dims, dims), min_size=1)
fractions = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


def random_importance(shapes: dict[str, tuple[int, int]], seed: int) -> Importance:
    """Full maps with ties (integer scores) and their marginals, as score_importance(keep_full=True) makes them."""
    g = torch.Generator().manual_seed(seed)
    full = {n: torch.randint(0, 4, shape, generator=g).float() for n, shape in shapes.items()}
    return Importance({n: f.sum(1) for n, f in full.items()}, {n: f.sum(0) for n, f in full.items()}, full)


def assert_canonical(mask: Mask, shapes: dict[str, tuple[int, int]]) -> None:
    assert set(mask.modules) == set(shapes)
    for name, m in mask.modules.items():
        assert m.shape == tuple(shapes[name])
        for idx, size in ((m.rows, m.shape[0]), (m.cols, m.shape[1])):
            assert idx.dtype == torch.int32 and idx.dim() == 1
            values = idx.tolist()
            assert values == sorted(set(values)), values  # sorted, no duplicates
            assert all(0 <= v < size for v in values), (values, size)


def roundtrip(mask: Mask) -> Mask:
    with tempfile.TemporaryDirectory() as tmp:
        digest = mask.save(Path(tmp) / "mask")
        loaded = Mask.load(Path(tmp) / "mask")
    assert loaded.digest == digest == mask.digest
    return loaded


@FAST
@given(shapes, fractions, fractions, st.sampled_from(["rows_cols", "global", "elementwise"]), st.integers(0, 2**16))
def test_derive_save_load_compose_stays_canonical(shapes, p, q, rule, seed):
    a = derive_mask(random_importance(shapes, seed), rule, p)
    b = derive_mask(random_importance(shapes, seed + 1), rule, q)
    if rule == "rows_cols":
        for n, (d_out, d_in) in shapes.items():
            assert len(a.modules[n].rows) == math.ceil(p * d_out) and len(a.modules[n].cols) == math.ceil(p * d_in)
    a, b = roundtrip(a), roundtrip(b)
    for mask in (a, b, union([a, b]), intersection([a, b]), roundtrip(union([a, b]))):
        assert_canonical(mask, shapes)
    u, i = union([a, b]), intersection([a, b])
    for n in shapes:
        for kind in ("rows", "cols"):
            sa, sb = set(getattr(a.modules[n], kind).tolist()), set(getattr(b.modules[n], kind).tolist())
            assert set(getattr(u.modules[n], kind).tolist()) == sa | sb
            assert set(getattr(i.modules[n], kind).tolist()) == sa & sb


def subset(draw, size: int) -> list[int]:
    return draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=size, unique=True))


@st.composite
def masked_linear_case(draw):
    d_out, d_in = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    return d_out, d_in, subset(draw, d_out), subset(draw, d_in), draw(st.integers(1, 3)), draw(st.integers(0, 2**16))


@FAST
@given(masked_linear_case())
def test_masked_training_never_touches_entries_outside_rows_x_cols(case):
    d_out, d_in, rows, cols, r, seed = case
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out)
    before = base.weight.detach().clone()
    layer = MaskedLoraLinear(base, torch.tensor(rows), torch.tensor(cols), r=r, alpha=2.0 * r)
    base.requires_grad_(False)
    x, target = torch.randn(32, d_in), torch.randn(32, d_out)
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=0.1, weight_decay=0.01)
    for _ in range(4):
        loss = nn.functional.mse_loss(layer(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
    outside = torch.ones(d_out, d_in, dtype=torch.bool)
    outside[torch.tensor(rows).unsqueeze(1), torch.tensor(cols)] = False
    delta = layer.delta_weight().detach()
    assert torch.count_nonzero(delta[outside]) == 0  # exactly zero, not merely small
    assert torch.equal(base.weight, before)  # the frozen base never moves
    A, B = layer.dense_lora()
    assert torch.count_nonzero((B @ A * layer.scaling)[outside]) == 0  # nor in the exported PEFT factors


@st.composite
def same_shaped_masks(draw):
    shape_of = draw(shapes)
    masks = []
    for _ in range(draw(st.integers(2, 4))):
        modules = {}
        for n, (d_out, d_in) in shape_of.items():
            rows = draw(st.lists(st.integers(0, d_out - 1), max_size=d_out))  # duplicates and any order
            cols = draw(st.lists(st.integers(0, d_in - 1), max_size=d_in))
            modules[n] = ModuleMask(rows, cols, (d_out, d_in))
        masks.append(Mask(modules))
    return masks, draw(st.permutations(range(len(masks))))


@FAST
@given(same_shaped_masks())
def test_composition_is_deterministic_and_order_free(case):
    masks, order = case
    shuffled = [masks[i] for i in order]
    for op in (union, intersection):
        digest = op(masks).digest
        assert op(masks).digest == digest  # same inputs, same digest
        assert op(shuffled).digest == digest  # any order
        assert op([roundtrip(m) for m in reversed(masks)]).digest == digest  # through files too
    assert union([masks[0], masks[0]]).digest == intersection([masks[0]]).digest == masks[0].digest
