"""The README's Python API example runs as written (a custom NNX module and a custom loss)."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _api_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- api-example: tests/test_readme.py runs this block -->")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_readme_python_api_example_runs():
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_api_example(), "README.md", "exec"), namespace)
    doc = namespace["doc"]
    assert len(doc["configs"]) == 2 * 2 * 2 * 2  # losses × learning rates × b1 × seeds
    assert {c["loss"] for c in doc["configs"]} == {"ce", "focal_loss"}
    assert doc["settings"]["model"] == "net" and doc["timing"]["compiled_chunks"] == 1
    assert doc["settings"]["optimizer"] == "adamw" and doc["axes"] == ["learning_rate", "b1"]
    assert 0 < doc["timing"]["eval_s"] < doc["timing"]["wall_s"]
    best = max(c["final"]["test_accuracy"] for c in doc["configs"] if c["loss"] == "focal_loss")
    assert best > 0.9  # the custom loss trains the custom network
    lines = out.getvalue().splitlines()
    assert len(lines) == 8 and lines[0].startswith("ce 0.001 0.8 ")
