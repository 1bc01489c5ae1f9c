"""The README's examples hold: the Python API example runs as written (real MiniLM, small data), and
the own-data example is valid params that read the files it names."""

import dataclasses
import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "adapter parameters" in out and "'accuracy'" in out
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").is_file()


def test_readme_own_data_example_validates_and_reads_the_files_it_names(tmp_path):
    import yaml

    from pipeline.params import load_params
    from taso.data import read_rows

    section = (ROOT / "README.md").read_text().split("## Run on your own data", 1)[1]
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text()) | example | {"compositions": {}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    assert set(params.tasks) == {"mrpc", "cola", "stsb", "news"}
    for task in params.tasks:  # each file the example names that this machine has reads as declared
        spec = params.spec(task)
        if (ROOT / spec.source).is_dir():
            spec = dataclasses.replace(spec, source=str(ROOT / spec.source), max_eval=5)
            assert len(read_rows(spec, "eval")) == 5
