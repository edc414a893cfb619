"""The ``>>>`` examples in the functional core's docstrings run and print what they show."""

import doctest
import importlib
import io

import pytest

# Every module with examples; a module listed here without any fails the test.
MODULES = [
    "softcls_jax",
    "softcls_jax.data",
    "softcls_jax.engine.driver",
    "softcls_jax.engine.evaluate",
    "softcls_jax.engine.layout",
    "softcls_jax.feature_major",
    "softcls_jax.gradients",
    "softcls_jax.labels",
    "softcls_jax.losses",
    "softcls_jax.metrics",
    "softcls_jax.models",
]
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, out.getvalue()
