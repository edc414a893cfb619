"""The benchmark's contenders must train the same thing: same init, same batches, same results."""

import jax
import numpy as np
import pytest

from experiments import bench
from softcls_jax import data


@pytest.fixture(scope="module")
def setup():
    dataset = data.load("digits")
    steps = 30
    reference = bench.workload(2, steps, dataset)
    params0 = jax.tree.map(lambda a: a[0, 0], jax.device_get(reference.init_state().params))
    return dataset, steps, params0, bench.batch_stream(reference, steps)


def test_sweep_and_naive_jax_agree(setup):
    dataset, steps, params0, batches = setup
    sweep = bench.run_sweep(dataset, 2, steps)
    naive = bench.run_naive_jax(dataset, 2, steps, params0, batches)
    assert len(sweep["accuracy"]) == 4
    np.testing.assert_allclose(
        sweep["accuracy"], naive["accuracy"], atol=1 / 360 + 1e-9
    )  # ≤ 1 test example
    assert naive["compile_s"] > 0 and sweep["compile_s"] > 0


def test_torch_contenders_agree_when_torch_is_installed(setup):
    pytest.importorskip("torch")
    dataset, steps, params0, batches = setup
    sweep = bench.run_sweep(dataset, 2, steps)
    for run in (bench.run_torch_loop, bench.run_torch_bmm):
        result = run(dataset, 2, steps, params0, batches)
        np.testing.assert_allclose(result["accuracy"], sweep["accuracy"], atol=1 / 360 + 1e-9)


def test_batch_stream_is_the_engines_epoch_order(setup):
    dataset, steps, _, batches = setup
    assert batches.shape == (steps, bench.BATCH)
    per_epoch = dataset.x_train.shape[0] // bench.BATCH
    epoch0 = batches[:per_epoch].ravel()
    assert len(np.unique(epoch0)) == epoch0.size  # no example twice within an epoch


def test_matmul_peak_is_positive():
    assert bench.matmul_peak(n=128, repeats=2) > 0
