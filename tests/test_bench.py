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
    # ≤ 1 test example
    np.testing.assert_allclose(sweep["accuracy"], naive["accuracy"], atol=1 / 360 + 1e-9)
    assert naive["compile_s"] > 0 and sweep["compile_s"] > 0


def test_the_users_mlp_is_the_built_in_one(setup):
    """user_mlp starts from the built-in mlp's parameters (same keys): its final losses agree to
    float rounding, feature-major or as traced."""
    dataset, steps, _, _ = setup
    final = lambda trainer: trainer.train()[1][-1]
    want = final(bench.workload(2, steps, dataset))
    for user in ("feature_major", "as_traced"):
        got = final(bench.workload(2, steps, dataset, user))
        np.testing.assert_allclose(got["test_loss"], want["test_loss"], rtol=1e-5)
        np.testing.assert_array_equal(got["test_accuracy"], want["test_accuracy"])


def test_an_unknown_user_mlp_variant_is_refused(setup):
    dataset, steps, _, _ = setup
    with pytest.raises(ValueError, match="user must be one of"):
        bench.workload(2, steps, dataset, "feature-major")


def test_torch_contenders_agree_when_torch_is_installed(setup):
    pytest.importorskip("torch")
    dataset, steps, params0, batches = setup
    sweep = bench.run_sweep(dataset, 2, steps)
    for run in (bench.run_torch_loop, bench.run_torch_bmm, bench.run_torch_func):
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


# ------------------------------------------------------------------ CNN workloads


@pytest.fixture(scope="module")
def cnn_setups():
    from experiments.workload import synthetic_images

    out = {}
    for name, dataset in (("cnn1d", data.load("mnist1d")), ("cnn2d", synthetic_images(600, 200))):
        steps = 20
        reference = bench.cnn_workload(name, 2, steps, dataset)
        params0 = jax.tree.map(lambda a: a[0, 0], jax.device_get(reference.init_state().params))
        out[name] = dataset, steps, params0, bench.batch_stream(reference, steps)
    return out


@pytest.mark.parametrize("name", ["cnn1d", "cnn2d"])
def test_cnn_sweep_and_naive_jax_agree(cnn_setups, name):
    dataset, steps, params0, batches = cnn_setups[name]
    sweep = bench.run_cnn_sweep(name, dataset, 2, steps)
    naive = bench.run_cnn_naive_jax(name, dataset, 2, steps, params0, batches)
    assert len(sweep["accuracy"]) == 2 and naive["compile_s"] > 0
    # evaluation is timed apart, inside the run time (the sweep evaluates once, at the end)
    for result in (sweep, naive):
        assert 0 < result["eval_s"] < result["run_s"]
    m = dataset.x_test.shape[0]
    np.testing.assert_allclose(sweep["accuracy"], naive["accuracy"], atol=2 / m + 1e-9)


def _first_config(name, dataset):
    """The workload's trainer and config 0's parameters and model state (as the bench takes them)."""
    trainer = bench.cnn_workload(name, 1, 1, dataset)
    state = jax.device_get(trainer.init_state())
    first = jax.tree.map(lambda a: a[0, 0], (state.params, state.model_state))
    return trainer.model, *first


@pytest.mark.parametrize("name", ["cnn1d", "cnn2d", "user_cnn", "resnet"])
def test_torch_nets_compute_the_same_logits(cnn_setups, name):
    # The PyTorch contenders start from the same function: NCHW layout and kernels converted,
    # BatchNorm's statistics copied (eval mode).
    torch = pytest.importorskip("torch")
    dataset = cnn_setups["cnn2d" if name != "cnn1d" else "cnn1d"][0]
    model, params0, state0 = _first_config(name, dataset)
    make, _, _, xt = bench._torch_cnn_setup(torch, name, dataset, params0, state0)
    with torch.no_grad():
        logits = make().eval()(xt[:16]).numpy()
    x = dataset.x_test[:16]
    want = model.apply_eval(params0, state0, x) if model.stateful else model.apply(params0, x)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("contender", ["torch_loop", "torch_func"])
def test_cnn_torch_contenders_agree_when_torch_is_installed(cnn_setups, contender):
    pytest.importorskip("torch")
    dataset, steps, params0, batches = cnn_setups["cnn1d"]
    sweep = bench.run_cnn_sweep("cnn1d", dataset, 2, steps)
    got = bench.run_cnn_torch(contender, "cnn1d", dataset, 2, steps, params0, batches)
    np.testing.assert_allclose(got["accuracy"], sweep["accuracy"], atol=0.02)  # ≤ 20 of 1000


def test_resnet_torch_func_equals_the_torch_loop_when_torch_is_installed(cnn_setups):
    # BatchNorm's running statistics are stacked buffers updated per config inside torch.vmap.
    pytest.importorskip("torch")
    dataset, steps = cnn_setups["cnn2d"][:2]
    reference = bench.cnn_workload("resnet", 2, steps, dataset)
    state = jax.device_get(reference.init_state())
    params0, state0 = jax.tree.map(lambda a: a[0, 0], (state.params, state.model_state))
    args = ("resnet", dataset, 2, steps, params0, bench.batch_stream(reference, steps))
    loop = bench.run_cnn_torch("torch_loop", *args, state0)
    func = bench.run_cnn_torch("torch_func", *args, state0)
    np.testing.assert_allclose(func["accuracy"], loop["accuracy"], atol=0.01)


def test_cnn_targets_read_the_rows():
    rows = [
        {
            "configs": g,
            "contender": c,
            "sweep_speedup": s,
            "config_examples_per_s": t,
            "steady_config_examples_per_s": t,
            "peak_share": p,
        }
        for g, c, s, t, p in [
            (8, "sweep", 1, 1.0, 0.2),
            (32, "torch_loop", 5.0, 0.1, 0.0),
            (32, "torch_func", 2.0, 0.1, 0.0),
            (128, "sweep", 1, 1.6, 0.3),
        ]
    ]
    targets = bench.cnn_targets("cnn1d", rows, (8, 32, 128))
    assert [t["met"] for t in targets] == [True, True, True, True]
    assert not bench.cnn_targets("cnn2d", rows[:1], (8,))[0]["met"]
