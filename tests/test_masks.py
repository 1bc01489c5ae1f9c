"""Masks: derivation rules, exact set composition, comparison, and save/load that refuses bad files."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from taso.importance import Importance, score_importance
from taso.io import ArtifactError
from taso.masks import (
    Mask,
    ModuleMask,
    check_fits,
    compare,
    derive_elementwise,
    derive_global,
    derive_mask,
    derive_rows_cols,
    intersection,
    load_for_model,
    mask_stats,
    merge_importance,
    random_like,
    read_mask_json,
    union,
)

SHAPES = {"layer.0.q": (12, 8), "layer.0.mlp": (20, 12), "layer.1.q": (12, 8), "layer.1.mlp": (8, 20)}


def random_importance(seed: int = 0, shapes=SHAPES, full: bool = True) -> Importance:
    """Continuous random maps (no ties), with marginals that are the sums of the full maps."""
    g = torch.Generator().manual_seed(seed)
    # Different scales per module, so per-matrix normalisation matters for the global rule.
    maps = {n: torch.rand(s, generator=g) ** 3 * (10.0**i) for i, (n, s) in enumerate(shapes.items())}
    return Importance(
        {n: m.sum(1) for n, m in maps.items()},
        {n: m.sum(0) for n, m in maps.items()},
        maps if full else None,
    )


def random_mask(seed: int, shapes=SHAPES, meta=None) -> Mask:
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for n, (d_out, d_in) in shapes.items():
        k_r, k_c = (
            int(torch.randint(0, d_out + 1, (1,), generator=g)),
            int(torch.randint(0, d_in + 1, (1,), generator=g)),
        )
        modules[n] = ModuleMask(
            torch.randperm(d_out, generator=g)[:k_r], torch.randperm(d_in, generator=g)[:k_c], (d_out, d_in)
        )
    return Mask(modules, dict(meta or {}))


def as_set(t: torch.Tensor) -> set[int]:
    return set(t.tolist())


def assert_canonical(m: ModuleMask):
    for idx in (m.rows, m.cols):
        assert idx.dtype == torch.int32
        assert idx.tolist() == sorted(set(idx.tolist()))


# --- ModuleMask ---------------------------------------------------------------------------------


def test_module_mask_is_sorted_unique_int32():
    m = ModuleMask([5, 1, 5, 3], torch.tensor([2, 0, 2], dtype=torch.int64), [6, 4])
    assert m.rows.tolist() == [1, 3, 5] and m.cols.tolist() == [0, 2]
    assert_canonical(m)
    assert m.shape == (6, 4)
    assert m.density == pytest.approx(3 * 2 / 24)
    assert m.kept_fraction == pytest.approx((3 + 2) / (6 + 4))
    assert not m.empty and ModuleMask([1], [], (6, 4)).empty and ModuleMask([], [1], (6, 4)).empty


# --- derivation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.01, 0.1, 0.25, 0.5, 1.0])
def test_rows_cols_keeps_ceil_p_d_top_scoring(p):
    imp = random_importance()
    mask = derive_rows_cols(imp, p)
    assert set(mask.modules) == set(SHAPES)
    for n, (d_out, d_in) in SHAPES.items():
        m = mask.modules[n]
        assert_canonical(m)
        assert m.shape == (d_out, d_in)
        assert len(m.rows) == math.ceil(p * d_out) and len(m.cols) == math.ceil(p * d_in)
        for kept, scores in ((m.rows, imp.rows[n]), (m.cols, imp.cols[n])):
            dropped = sorted(set(range(len(scores))) - as_set(kept))
            if dropped:
                assert scores[kept.long()].min() > scores[dropped].max()
    assert mask.meta["rule"] == "rows_cols" and float(mask.meta["p"]) == p


def test_rows_cols_on_real_scores(make_model, make_batches):
    model = make_model("bert")
    imp = score_importance(model, make_batches("bert"))
    mask = derive_rows_cols(imp, 0.25)
    for n, m in mask.modules.items():
        assert set(m.rows.tolist()) == set(torch.topk(imp.rows[n], len(m.rows)).indices.tolist())
    check_fits(mask, model)


def test_derivation_is_deterministic_even_with_ties():
    shapes = {"layer.0.q": (10, 6)}
    flat = Importance({"layer.0.q": torch.ones(10)}, {"layer.0.q": torch.ones(6)})
    a, b = derive_rows_cols(flat, 0.3), derive_rows_cols(flat, 0.3)
    assert a.digest == b.digest
    assert len(a.modules["layer.0.q"].rows) == 3
    imp = random_importance(shapes=shapes)
    for rule in ("rows_cols", "elementwise", "global"):
        assert derive_mask(imp, rule, 0.2).digest == derive_mask(imp, rule, 0.2).digest


@pytest.mark.parametrize("q", [0.01, 0.05, 0.2])
def test_elementwise_rows_and_cols_touched_by_top_entries(q):
    imp = random_importance()
    mask = derive_elementwise(imp, q)
    for n, full in imp.full.items():
        d_out, d_in = full.shape
        k = math.ceil(q * full.numel())
        entries = sorted(((float(full[i, j]), i, j) for i in range(d_out) for j in range(d_in)), reverse=True)[:k]
        m = mask.modules[n]
        assert_canonical(m)
        assert as_set(m.rows) == {i for _, i, _ in entries}
        assert as_set(m.cols) == {j for _, _, j in entries}


def test_elementwise_requires_full_maps():
    with pytest.raises(ValueError, match="keep_full"):
        derive_elementwise(random_importance(full=False), 0.1)
    partial = random_importance()
    partial.full.pop("layer.1.q")
    with pytest.raises(ValueError, match="keep_full"):
        derive_mask(partial, "elementwise", 0.1)


@pytest.mark.parametrize(("seed", "p"), [(0, 0.5), (1, 0.25), (1, 0.5), (4, 0.25)])
def test_global_spends_the_rows_cols_budget_on_the_top_normalised_scores(seed, p):
    imp = random_importance(seed=seed)
    glob, local = derive_global(imp, p), derive_rows_cols(imp, p)
    # Inputs chosen so that no module ends up with rows but no columns (see the next test for that).
    assert not any(m.empty for m in glob.modules.values())
    for kind in ("rows", "cols"):
        assert sum(len(getattr(m, kind)) for m in glob.modules.values()) == sum(
            len(getattr(m, kind)) for m in local.modules.values()
        )
        # Kept entries beat every dropped entry after scaling each module's scores to mean 1.
        normed = {n: s / s.mean() for n, s in getattr(imp, kind).items()}
        kept = [float(normed[n][i]) for n, m in glob.modules.items() for i in getattr(m, kind).tolist()]
        dropped = [
            float(normed[n][i])
            for n, m in glob.modules.items()
            for i in sorted(set(range(len(normed[n]))) - as_set(getattr(m, kind)))
        ]
        assert min(kept) >= max(dropped)
    # It really redistributes: some module gets a share different from ceil(p·d).
    assert any(
        (len(glob.modules[n].rows), len(glob.modules[n].cols))
        != (len(local.modules[n].rows), len(local.modules[n].cols))
        for n in SHAPES
    )


def test_global_empties_modules_without_rows_or_cols():
    shapes = {"a": (8, 8), "b": (8, 8)}
    concentrated = torch.tensor([10.0, 10, 10, 10, 0, 0, 0, 0])  # normalised: 2 on four entries
    uniform = torch.ones(8)  # normalised: 1 everywhere
    imp = Importance({"a": concentrated, "b": uniform}, {"a": uniform, "b": concentrated})
    mask = derive_global(imp, 0.25)  # budget 2 + 2 = 4 rows, 4 cols
    # a's rows (normalised 2) beat all of b's (1), b's columns beat a's:
    # b wins all the columns but no row, a all the rows but no column: both are emptied.
    assert mask.modules["b"].empty and mask.modules["a"].empty
    assert len(mask.modules["a"].rows) == len(mask.modules["b"].cols) == 0
    assert mask.trainable_params(1) == 0 and mask.modules["a"].shape == shapes["a"]


def test_derive_mask_dispatch_and_bad_arguments():
    imp = random_importance()
    mask = derive_mask(imp, "rows_cols", 0.25)
    assert mask.meta["importance_digest"] == imp.digest
    assert mask.digest == derive_rows_cols(imp, 0.25).digest
    with pytest.raises(ValueError, match="diagonal"):
        derive_mask(imp, "diagonal", 0.25)
    for p in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="p must be"):
            derive_rows_cols(imp, p)


# --- composition --------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [(0, 1), (2, 3, 4), (5,)])
def test_union_and_intersection_equal_python_sets(seeds):
    masks = [random_mask(s) for s in seeds]
    u, i = union(masks), intersection(masks)
    for n in SHAPES:
        for kind in ("rows", "cols"):
            sets = [as_set(getattr(m.modules[n], kind)) for m in masks]
            assert getattr(u.modules[n], kind).tolist() == sorted(set.union(*sets))
            assert getattr(i.modules[n], kind).tolist() == sorted(set.intersection(*sets))
        assert u.modules[n].shape == i.modules[n].shape == SHAPES[n]
        assert_canonical(u.modules[n])
    assert json.loads(u.meta["sources"]) == [m.digest for m in masks]
    assert u.meta["rule"] == "union" and i.meta["rule"] == "intersection"


def test_composition_is_deterministic_and_order_free():
    a, b, c = random_mask(0), random_mask(1), random_mask(2)
    again = [random_mask(0), random_mask(1), random_mask(2)]
    assert union([a, b, c]).digest == union(again).digest
    assert intersection([a, b, c]).digest == intersection(again).digest
    # Content digests ignore metadata, so the order of the inputs does not matter.
    assert union([a, b, c]).digest == union([c, a, b]).digest
    assert union([a, a]).digest == a.digest == intersection([a, a]).digest
    assert a.digest != b.digest


def test_composition_refuses_masks_of_other_models():
    a = random_mask(0)
    renamed = Mask({("x" + n): m for n, m in random_mask(1).modules.items()})
    with pytest.raises(ArtifactError, match="mask 1"):
        union([a, renamed])
    reshaped = Mask({n: ModuleMask(m.rows, m.cols, (m.shape[0] + 1, m.shape[1])) for n, m in a.modules.items()})
    with pytest.raises(ArtifactError, match="shapes differ"):
        intersection([a, reshaped])
    with pytest.raises(ValueError):
        union([])


def test_merge_importance_weights_unit_mass_maps():
    a, b = random_importance(0, full=False), random_importance(1, full=False)
    loud = Importance({n: 1000 * r for n, r in b.rows.items()}, {n: 1000 * c for n, c in b.cols.items()})
    merged = merge_importance([a, b], [0.25, 0.75])
    # Scaling a map does not change its weight in the merge.
    same = merge_importance([a, loud], [0.25, 0.75])
    for n in SHAPES:
        want = 0.25 * a.rows[n] / a.rows[n].sum() + 0.75 * b.rows[n] / b.rows[n].sum()
        torch.testing.assert_close(merged.rows[n], want)
        torch.testing.assert_close(same.rows[n], want)
        assert merged.cols[n].sum() == pytest.approx(1.0)
    assert (
        derive_rows_cols(merged, 0.25).digest == derive_rows_cols(merge_importance([a, b], [0.25, 0.75]), 0.25).digest
    )
    with pytest.raises(ValueError):
        merge_importance([a, b], [1.0])
    other = random_importance(0, shapes={"layer.0.q": (12, 8)}, full=False)
    with pytest.raises(ArtifactError):
        merge_importance([a, other])
    # Maps of two statistics (Σ|W ⊙ G| and LoSiA's Ī ⊙ Ū) do not add up, even at unit mass.
    ema = Importance(a.rows, a.cols, None, {"statistic": "sensitivity"})
    with pytest.raises(ArtifactError, match="different statistics \\(sensitivity, taylor\\).*same score.statistic"):
        merge_importance([a, ema])
    assert merge_importance([ema, ema]).meta["statistic"] == "sensitivity"


# --- comparison, statistics, random baseline ----------------------------------------------------


def test_compare_jaccard_on_hand_built_masks():
    shape = (6, 4)
    a = Mask({"m1": ModuleMask([0, 1, 2], [0], shape), "m2": ModuleMask([4], [0, 1, 2, 3], shape)})
    b = Mask({"m1": ModuleMask([1, 2, 3], [0, 1], shape), "m2": ModuleMask([5], [0, 1, 2, 3], shape)})
    out = compare(a, b)
    # m1 rows {0,1,2} vs {1,2,3}: 2/4; cols {0} vs {0,1}: 1/2. m2 rows {4} vs {5}: 0/2; cols equal: 4/4.
    assert out["modules"]["m1"] == {"rows": 2 / 4, "cols": 1 / 2}
    assert out["modules"]["m2"] == {"rows": 0.0, "cols": 1.0}
    assert out["overall"] == {"rows": (2 + 0) / (4 + 2), "cols": (1 + 4) / (2 + 4)}
    assert compare(a, a)["overall"] == {"rows": 1.0, "cols": 1.0}
    empty = Mask({"m1": ModuleMask([], [], shape)})
    assert compare(empty, empty)["modules"]["m1"] == {"rows": 1.0, "cols": 1.0}


def test_trainable_params_and_stats():
    shape = (10, 6)
    mask = Mask(
        {"a": ModuleMask([0, 1, 2], [4, 5], shape), "b": ModuleMask([1], [], shape), "c": ModuleMask([9], [0], shape)}
    )
    for r in (1, 4):
        assert mask.trainable_params(r) == r * ((3 + 2) + (1 + 1))  # b cannot hold an update
    stats = mask_stats(mask, rank=2)
    assert stats["trainable_params"] == 14 and stats["n_modules"] == 2
    assert stats["modules"]["a"] == {"rows": 3, "cols": 2, "shape": [10, 6], "density": 6 / 60, "trainable": 10}
    assert stats["modules"]["b"]["trainable"] == 0
    assert stats["density"] == pytest.approx((6 + 1) / 180)


def test_random_like_keeps_counts():
    mask = derive_rows_cols(random_importance(), 0.3)
    r1, r1b, r2 = random_like(mask, seed=1), random_like(mask, seed=1), random_like(mask, seed=2)
    assert r1.digest == r1b.digest and r1.digest != r2.digest and r1.digest != mask.digest
    for n, m in mask.modules.items():
        for kind in ("rows", "cols"):
            got = getattr(r1.modules[n], kind)
            assert len(got) == len(getattr(m, kind))
            assert 0 <= got.min() and got.max() < m.shape[0 if kind == "rows" else 1]
        assert_canonical(r1.modules[n])
        assert r1.modules[n].shape == m.shape
    assert r1.trainable_params(1) == mask.trainable_params(1)
    assert r1.meta["like"] == mask.digest


# --- save / load --------------------------------------------------------------------------------


def test_save_load_is_exact(tmp_path):
    mask = random_mask(0, meta={"task": "sentiment", "base_model": "tiny@abc", "p": "0.25"})
    digest = mask.save(tmp_path / "m", rank=2)
    assert digest == mask.digest
    for where in (tmp_path / "m", tmp_path / "m" / "mask.safetensors"):
        loaded = Mask.load(where)
        assert loaded.digest == digest
        assert loaded.meta == mask.meta
        assert set(loaded.modules) == set(mask.modules)
        for n, m in mask.modules.items():
            got = loaded.modules[n]
            assert torch.equal(got.rows, m.rows) and torch.equal(got.cols, m.cols) and got.shape == m.shape
    side = read_mask_json(tmp_path / "m")
    assert side["digest"] == digest and side["meta"] == mask.meta
    assert side["trainable_params"] == mask.trainable_params(2) and side["rank"] == 2
    assert set(side["modules"]) == set(SHAPES)


def test_save_replaces_an_existing_mask(tmp_path):
    random_mask(0).save(tmp_path / "m")
    second = random_mask(1)
    second.save(tmp_path / "m")
    assert Mask.load(tmp_path / "m").digest == second.digest
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["mask.json", "mask.safetensors"]


def _payload_offset(path, tensor: str) -> tuple[int, str, list[int]]:
    """Byte offset, dtype and [begin, end) of ``tensor``'s data in a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return 8 + n, header[tensor]["dtype"], header[tensor]["data_offsets"]


def test_truncated_file_is_refused(tmp_path):
    random_mask(0).save(tmp_path / "m")
    f = tmp_path / "m" / "mask.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(ArtifactError, match="truncated or corrupt") as e:
        Mask.load(tmp_path / "m")
    assert "mask.safetensors" in str(e.value)
    f.write_bytes(b"")
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        Mask.load(tmp_path / "m")


def test_altered_payload_fails_the_digest_check(tmp_path):
    mask = Mask({"layer.0.q": ModuleMask([1, 4, 7], [0, 2], (12, 8))})
    mask.save(tmp_path / "m")
    f = tmp_path / "m" / "mask.safetensors"
    base, dtype, (begin, _end) = _payload_offset(f, "layer.0.q.rows")
    assert dtype == "I32"
    raw = bytearray(f.read_bytes())
    assert struct.unpack_from("<i", raw, base + begin)[0] == 1
    struct.pack_into("<i", raw, base + begin, 2)  # still a valid row index, but not the saved one
    f.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="does not match its recorded digest"):
        Mask.load(f)


def test_out_of_range_index_is_refused(tmp_path):
    Mask({"layer.0.q": ModuleMask([1, 4, 7], [0, 2], (12, 8))}).save(tmp_path / "m")
    f = tmp_path / "m" / "mask.safetensors"
    base, _, (begin, _) = _payload_offset(f, "layer.0.q.cols")
    raw = bytearray(f.read_bytes())
    struct.pack_into("<i", raw, base + begin + 4, 99)
    f.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="layer.0.q has a column index outside 0..7"):
        Mask.load(f)


def test_file_that_is_not_a_mask_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ArtifactError, match="not a taso mask"):
        Mask.load(tmp_path / "x.safetensors")
    save_file(
        {"m.rows": torch.zeros(1, dtype=torch.int32)},
        str(tmp_path / "y.safetensors"),
        metadata={"shapes": json.dumps({"m": [2, 2]})},
    )
    with pytest.raises(ArtifactError, match="no m.cols tensor"):
        Mask.load(tmp_path / "y.safetensors")
    with pytest.raises(ArtifactError, match="not found"):
        Mask.load(tmp_path / "nothing")


def test_mask_for_another_model_is_refused(tmp_path, make_model, make_batches):
    bert = make_model("bert")
    mask = derive_rows_cols(score_importance(bert, make_batches("bert")), 0.25).with_meta(base_model="tiny-bert")
    mask.save(tmp_path / "m")
    assert load_for_model(tmp_path / "m", make_model("bert", seed=1)).digest == mask.digest

    with pytest.raises(ArtifactError, match=r"not found in the model: \['bert\.encoder") as e:
        load_for_model(tmp_path / "m", make_model("llama_cls"))
    assert "tiny-bert" in str(e.value)

    wider = make_model("bert", hidden=48)
    with pytest.raises(ArtifactError, match=r"mask module bert\.encoder\.layer\.\d\.\S+ has shape \(\d+, 32\)") as e:
        load_for_model(tmp_path / "m", wider)
    assert ", 48)" in str(e.value) and "another base model" in str(e.value)


def headed_importance() -> Importance:
    """q has two heads of 4 rows: head 0 is evenly important, head 1 has one outstanding row but less mass."""
    q_rows = torch.tensor([1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 0.0, 0.0])
    mlp_rows = torch.arange(1.0, 9.0)
    cols = torch.arange(1.0, 7.0)
    return Importance(
        {"layer.0.q": q_rows, "layer.0.mlp": mlp_rows},
        {"layer.0.q": cols, "layer.0.mlp": cols.flip(0)},
        meta={"heads": json.dumps({"layer.0.q": 4})},
    )


@pytest.mark.parametrize("rule", ["rows_cols", "global"])
def test_the_head_unit_keeps_whole_heads_where_rows_would_split_them(rule):
    imp = headed_importance()
    by_row = derive_mask(imp, rule, 0.5)
    by_head = derive_mask(imp, rule, 0.5, unit="head")
    q_row, q_head = by_row.modules["layer.0.q"].rows.tolist(), by_head.modules["layer.0.q"].rows.tolist()
    # The rule decides how many rows each matrix keeps; the unit only which: head 0 (mean 1.0) whole
    # first, then head 1's (mean 0.75) best rows, the outstanding row 4 before its zeros.
    assert len(q_head) == len(q_row) and q_head == list(range(len(q_row)))
    if rule == "rows_cols":
        assert q_row == [0, 1, 2, 4]  # rows: the outstanding row splits head 0
    assert by_head.meta["unit"] == "head" and "unit" not in by_row.meta
    for name in ("layer.0.q", "layer.0.mlp"):  # columns, and rows of a matrix without heads, as the rule chose
        assert by_head.modules[name].cols.tolist() == by_row.modules[name].cols.tolist()
    assert by_head.modules["layer.0.mlp"].rows.tolist() == by_row.modules["layer.0.mlp"].rows.tolist()


def test_the_head_unit_needs_recorded_heads_and_a_row_rule():
    imp = headed_importance()
    with pytest.raises(ValueError, match="records no attention heads.*re-run the score stage.*not named query"):
        derive_mask(Importance(imp.rows, imp.cols), "global", 0.5, unit="head")
    with pytest.raises(ValueError, match="elementwise rule keeps single entries"):
        derive_mask(imp, "elementwise", 0.5, unit="head")
    with pytest.raises(ValueError, match="unknown mask unit 'column'"):
        derive_mask(imp, "global", 0.5, unit="column")
    # A weighted composition of one model's maps keeps its heads, so it can use the head unit.
    merged = merge_importance([imp, headed_importance()])
    assert merged.heads == {"layer.0.q": 4}
    assert derive_mask(merged, "rows_cols", 0.5, unit="head").modules["layer.0.q"].rows.tolist() == [0, 1, 2, 3]


def test_targets_that_match_nothing_name_the_key_and_what_exists(make_model):
    from taso.targets import find_targets

    with pytest.raises(ArtifactError, match=r"'nope' \(model.targets\) match no linear layer of this model; .*query"):
        find_targets(make_model(), "nope")
