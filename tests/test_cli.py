"""The `taso` CLI: every command documents a runnable example; mask commands read real mask files."""

from __future__ import annotations

import json

import click
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from taso.masks import Mask, ModuleMask


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in all_commands(main)], ids=" ".join)
def test_every_command_help_ends_with_an_example_of_itself(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    example = result.output.split("Example:")[-1].strip().splitlines()[0].split()
    assert "Example:" in result.output
    assert example[0] == "taso" and tuple(example[1 : 1 + len(path)]) == path


def make_mask(rows, cols, shape=(6, 4)) -> Mask:
    return Mask({"layer.0.q": ModuleMask(torch.tensor(rows), torch.tensor(cols), shape)}, {"task": "t"})


def test_mask_show_and_compare(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_mask([0, 1, 2], [0, 1]).save(a)
    make_mask([1, 2, 3], [1]).save(b)
    shown = CliRunner().invoke(main, ["mask", "show", str(a), "--json"])
    assert shown.exit_code == 0, shown.output
    stats = json.loads(shown.output)
    assert stats["trainable_params"] == 5 and stats["modules"]["layer.0.q"]["rows"] == 3
    compared = CliRunner().invoke(main, ["mask", "compare", str(a), str(b), "--json"])
    overall = json.loads(compared.output)["overall"]
    assert overall == {"rows": 2 / 4, "cols": 1 / 2}


def test_corrupt_mask_is_one_clear_line(tmp_path):
    make_mask([0], [0]).save(tmp_path / "m")
    f = tmp_path / "m" / "mask.safetensors"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    result = CliRunner().invoke(main, ["mask", "show", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "truncated or corrupt safetensors file" in result.output and "Traceback" not in result.output
