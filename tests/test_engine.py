import dataclasses
import functools
import gc

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.linear_model import LogisticRegression

from softcls_jax import data, engine, losses, models
from softcls_jax.engine import batches, step


@functools.cache
def digits():
    return data.load("digits")


def _trainer(grid, steps=40, eval_every=20, hidden=(16,), model="mlp", optimizer="sgd", batch=64):
    d = digits()
    m = models.make_model(model, d.num_features, d.num_classes, hidden=hidden)
    return engine.Trainer(m, d, grid, engine.TrainSettings(optimizer, steps, batch, eval_every))


def _batch_index(trainer):
    """The per-step definition of a seed's minibatch, for this trainer's data and batch size."""
    n = trainer.dataset.x_train.shape[0]
    return lambda key, t: batches.batch_index(key, t, n, trainer.settings.batch_size)


def test_compilations_do_not_depend_on_learning_rates_seeds_or_losses():
    small = _trainer(engine.Layout(("ce",), (0.1,), (0,)))
    small.train()
    big = _trainer(engine.Layout(("ce", "mse", "square"), (0.01, 0.1, 0.3, 1.0), (0, 1, 2)))
    big.train()
    assert small.num_traces == big.num_traces == 1
    # chunks 20, 20, 10
    uneven = _trainer(engine.Layout(("ce",), (0.1,), (0,)), steps=50, eval_every=20)
    uneven.train()
    assert uneven.num_traces == 2


def test_common_random_numbers():
    trainer = _trainer(engine.Layout(("ce", "mse"), (0.05, 0.2), (0, 1)))
    state = trainer.init_state()
    kernel = np.asarray(state.params["out"]["kernel"])  # (S, K, H, C)
    for k in range(1, 4):  # every config of a seed starts from the same parameters
        np.testing.assert_array_equal(kernel[0, k], kernel[0, 0])
    assert not np.array_equal(kernel[0, 0], kernel[1, 0])  # seeds differ in init
    lrs = np.asarray(state.hparams["learning_rate"])
    np.testing.assert_allclose(lrs, [[0.05, 0.2, 0.05, 0.2]] * 2)
    # same seed, same batches: the index stream depends on the seed alone
    one = _batch_index(trainer)
    idx = jax.vmap(one, (0, None))(trainer.data_keys, jnp.int32(3))
    assert not np.array_equal(idx[0], idx[1])
    again = one(trainer.data_keys[0], jnp.int32(3))
    np.testing.assert_array_equal(idx[0], again)


def test_chunk_batch_indices_equal_the_per_step_definition():
    trainer = _trainer(engine.Layout(("ce",), (0.1,), (0, 3)), batch=100)  # 14 steps per epoch
    key, n = trainer.data_keys[1], digits().x_train.shape[0]
    # crosses 3 epochs
    chunk = jax.jit(batches.batch_indices, static_argnums=(2, 3, 4))(key, jnp.int32(9), 40, n, 100)
    per_step = jnp.stack([_batch_index(trainer)(key, jnp.int32(t)) for t in range(9, 49)])
    np.testing.assert_array_equal(chunk, per_step)


@pytest.mark.parametrize("model", ["linear", "mlp", "cnn1d"])
def test_cheaply_compiled_programs_give_the_default_results(model):
    # The init (-O1) and index (-O0) programs run once and are compiled cheaply on CPU: bitwise
    # the same results.
    trainer = _trainer(engine.Layout(("ce", "mse"), (0.1, 0.3), (0, 5)), model=model)
    default_init = jax.jit(functools.partial(step.init, trainer.program))(
        trainer.init_keys, trainer.hparams
    )
    chex.assert_trees_all_equal(trainer.init_state(), default_init)
    indices = trainer.batch_indices(jnp.int32(30), 7)
    per_step = jax.vmap(jax.vmap(_batch_index(trainer), (0, None)), (None, 0))(
        trainer.data_keys, jnp.arange(30, 37, dtype=jnp.int32)
    )
    np.testing.assert_array_equal(indices, per_step)


def test_divergence_is_frozen_and_isolated():
    # The same grid with a sane rate or an absurd one in slot 2: every other config is bitwise identical.
    _, h_ref = _trainer(engine.Layout(("ce", "mse"), (0.01, 0.1, 0.05), (0, 1))).train()
    with_absurd = _trainer(engine.Layout(("ce", "mse"), (0.01, 0.1, 1e6), (0, 1)))
    state, h = with_absurd.train()
    diverged = with_absurd.diverged_steps(state)
    assert np.all(diverged[:, 2] >= 0)  # CE with lr 1e6 blows up
    assert np.all(diverged[:, [0, 1, 3, 4]] == -1)
    others = [0, 1, 3, 4]  # slot 2 of each loss holds the swapped rate
    for name in engine.METRICS:
        for ref_rec, rec in zip(h_ref, h, strict=True):
            np.testing.assert_array_equal(
                ref_rec[name][:, others], rec[name][:, others], err_msg=name
            )
            if rec["step"] > diverged[0, 2]:
                assert np.all(np.isnan(rec[name][:, 2]))
    finite = [np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params)]
    assert all(finite)  # frozen at the last finite state, never NaN


def test_a_grid_without_the_diverging_config_agrees_to_rounding():
    # A narrower grid is another compiled program: equal to float32 rounding, not to the bit.
    _, narrow = _trainer(engine.Layout(("ce", "mse"), (0.01, 0.1), (0, 1))).train()
    _, wide = _trainer(engine.Layout(("ce", "mse"), (0.01, 0.1, 1e6), (0, 1))).train()
    for name in engine.METRICS:
        np.testing.assert_allclose(
            narrow[-1][name], wide[-1][name][:, [0, 1, 3, 4]], rtol=1e-5, atol=1e-6, err_msg=name
        )


def _plain_optax_loop(lr, seed, steps, batch, loss_fn, hidden):
    """One config trained the ordinary way: a Python loop over optax steps."""
    d = digits()
    model = models.make_model("mlp", d.num_features, d.num_classes, hidden=hidden)
    params = model.init(jax.random.fold_in(jax.random.key(seed), 0))
    tx = optax.sgd(lr)
    opt_state = tx.init(params)
    data_key = jax.random.fold_in(jax.random.key(seed), 1)
    n = d.x_train.shape[0]
    per_epoch = n // batch

    @jax.jit
    def step(params, opt_state, xb, yb):
        _loss, grads = jax.value_and_grad(lambda p: loss_fn(model.apply(p, xb), yb).mean())(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    for t in range(steps):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, t // per_epoch), n))
        idx = perm[(t % per_epoch) * batch : (t % per_epoch + 1) * batch]
        params, opt_state = step(params, opt_state, d.x_train[idx], d.y_train[idx])
    return params


def test_grid_config_matches_plain_optax_loop():
    steps, batch = 60, 64  # 60 steps cross an epoch boundary (22 batches of 64 per epoch)
    trainer = _trainer(engine.Layout(("ce", "mse"), (0.03, 0.3), (0, 7)), steps=steps, batch=batch)
    state, _ = trainer.train()
    for s, seed in enumerate((0, 7)):
        for k, (loss, lr) in enumerate([("ce", 0.03), ("ce", 0.3), ("mse", 0.03), ("mse", 0.3)]):
            alone = _plain_optax_loop(lr, seed, steps, batch, losses.get_loss(loss), (16,))
            in_grid = jax.tree.map(lambda x, s=s, k=k: x[s, k], state.params)
            chex.assert_trees_all_close(in_grid, alone, atol=2e-5, rtol=2e-5)


def test_softmax_regression_ce_reaches_sklearn_logistic_regression():
    d = digits()
    reference = (
        LogisticRegression(max_iter=5000).fit(d.x_train, d.y_train).score(d.x_test, d.y_test)
    )
    trainer = _trainer(
        engine.Layout(("ce",), (0.1,), (0, 1, 2)),
        steps=2000,
        eval_every=1000,
        model="linear",
        batch=128,
    )
    _, history = trainer.train()
    accuracy = float(np.mean(history[-1]["test_accuracy"]))
    assert accuracy >= reference - 0.01, (accuracy, reference)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_other_optimizers_learn(optimizer):
    trainer = _trainer(engine.Layout(("ce",), (0.01,), (0,)), steps=100, optimizer=optimizer)
    _, history = trainer.train()
    assert history[-1]["test_accuracy"][0, 0] > 0.8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: engine.Layout(("hinge",), (0.1,), (0,)), "unknown loss 'hinge'"),
        (lambda: engine.Layout(("ce",), (0.0,), (0,)), "finite number > 0"),
        (lambda: engine.Layout(("ce",), (float("nan"),), (0,)), "finite number > 0"),
        (lambda: engine.Layout(("ce",), ("0.1",), (0,)), "must be a number"),
        (lambda: engine.Layout(("ce",), (0.1, 0.1), (0,)), "must not repeat"),
        (lambda: engine.Layout(("ce",), ([0.1],), (0,)), r"learning rates must be numbers"),
        (
            lambda: engine.Layout(("ce",), (0.1,), (0,), {"weight_decay": ([0.0],)}),
            r"weight_decay values must be numbers, got \[\[0.0\]\]",
        ),
        (lambda: engine.Layout(("ce",), (0.1,), (-1,)), "seeds must be integers >= 0"),
        (lambda: engine.TrainSettings(optimizer="lbfgs"), "unknown optimizer 'lbfgs'"),
        (lambda: engine.TrainSettings(steps=0), "steps must be an integer >= 1"),
        (lambda: engine.TrainSettings(eval_every=-5), "eval_every must be an integer >= 1"),
        (
            lambda: _trainer(engine.Layout(("ce",), (0.1,), (0,)), batch=5000),
            "larger than the training set",
        ),
    ],
)
def test_bad_settings_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_config_agrees_to_rounding_in_a_wider_grid():
    small_state, small = _trainer(engine.Layout(("ce", "mse"), (0.1, 0.5), (0, 1))).train()
    wide_state, wide = _trainer(engine.Layout(("ce", "mse"), (0.01, 0.1, 0.5, 3.0), (0, 1))).train()
    shared = [1, 2, 5, 6]  # (ce, 0.1), (ce, 0.5), (mse, 0.1), (mse, 0.5) in the wide grid
    for name in engine.METRICS:
        np.testing.assert_allclose(
            small[-1][name], wide[-1][name][:, shared], rtol=1e-5, atol=1e-6, err_msg=name
        )
    for a, w in zip(
        jax.tree.leaves(small_state.params), jax.tree.leaves(wide_state.params), strict=True
    ):
        np.testing.assert_allclose(a, w[:, shared], rtol=1e-4, atol=1e-6)


def test_a_config_alone_agrees_to_float32_rounding():
    # A 1-config grid compiles a differently fused program (no loss switch, size-1 axes).
    _, alone = _trainer(engine.Layout(("mse",), (0.1,), (1,))).train()
    _, grid = _trainer(engine.Layout(("ce", "mse"), (0.01, 0.1, 0.5), (0, 1))).train()
    for name in engine.METRICS:
        np.testing.assert_allclose(
            alone[-1][name][0, 0], grid[-1][name][1, 4], rtol=1e-5, err_msg=name
        )


def test_config_blocks_train_the_same_configs_to_rounding():
    # 2 losses x 5 rates in blocks of <= 4 configs: 3 blocks of 2 rates per loss, one rate padded.
    grid = engine.Layout(("ce", "mse"), (0.01, 0.03, 0.1, 0.3, 1.0), (0, 1))
    whole = _trainer(grid)
    d = digits()
    m = models.make_model("mlp", d.num_features, d.num_classes, hidden=(16,))
    blocked = engine.Trainer(m, d, grid, engine.TrainSettings("sgd", 40, 64, 20), block_configs=4)
    assert (whole.layout.num_blocks, blocked.layout.num_blocks, blocked.layout.padded_shape) == (
        1,
        3,
        (2, 12),
    )
    (s_whole, h_whole), (s_blocked, h_blocked) = whole.train(), blocked.train()
    assert blocked.num_traces == 1
    for name in engine.METRICS:
        assert h_blocked[-1][name].shape == (2, 10)
        np.testing.assert_allclose(h_blocked[-1][name], h_whole[-1][name], rtol=1e-5, atol=1e-6)
    real = lambda t, s: jax.tree.map(lambda x: np.asarray(x)[:, t.layout.real_k], s.params)
    chex.assert_trees_all_close(real(blocked, s_blocked), real(whole, s_whole), atol=1e-5)


def test_block_configs_must_be_an_integer():
    with pytest.raises(ValueError, match="block_configs must be an integer"):
        d = digits()
        m = models.make_model("linear", d.num_features, d.num_classes)
        engine.Trainer(
            m, d, engine.Layout(("ce",), (0.1,), (0,)), engine.TrainSettings(), block_configs=2.5
        )


def test_block_configs_must_not_be_negative():
    with pytest.raises(ValueError, match="block_configs must be an integer >= 0, got -1"):
        d = digits()
        m = models.make_model("linear", d.num_features, d.num_classes)
        engine.Trainer(
            m, d, engine.Layout(("ce",), (0.1,), (0,)), engine.TrainSettings(), block_configs=-1
        )


@pytest.mark.parametrize("n, chunk", [(7, 3), (6, 3), (2, 4)])  # remainder, exact, one chunk
@pytest.mark.parametrize("name", ["mlp", "cnn2d", "gru"])
def test_evaluation_in_example_chunks_equals_one_forward_pass_per_config(name, n, chunk):
    from softcls_jax.engine.evaluate import grid_logits

    shape = (16, 16, 1)
    model = models.make_model(name, 256, 3, image_shape=shape if name == "cnn2d" else None)
    params = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 2))
    x = jax.random.normal(jax.random.key(1), (n, 256))
    chunked = jax.jit(lambda p, x: grid_logits(model.apply, p, x, chunk))(params, x)
    assert chunked.shape == (2, n, 3)
    for k in range(2):
        one = model.apply(jax.tree.map(lambda a, k=k: a[k], params), x)
        np.testing.assert_allclose(chunked[k], one, rtol=1e-5, atol=1e-6)


def test_evaluation_config_blocks_fit_the_budget_and_divide_the_grid():
    from softcls_jax.engine.evaluate import config_block

    assert config_block(12, 100, budget=500) == 4  # 5 fit, 4 is the largest divisor
    assert config_block(12, 100, budget=10_000) == 12
    assert config_block(7, 100, budget=500) == 1  # a prime grid: one at a time
    assert config_block(3, 10**9, budget=500) == 1  # one config over the budget still runs


def test_evaluation_helpers_reject_empty_chunks_and_grids():
    from softcls_jax.engine.evaluate import config_block, grid_logits

    with pytest.raises(ValueError, match="chunk must be at least 1 example, got 0"):
        grid_logits(lambda w, x: w * x, jnp.ones(2), jnp.ones(3), chunk=0)
    with pytest.raises(ValueError, match="num_configs must be at least 1, got 0"):
        config_block(0, 100, budget=500)


def test_evaluation_in_config_blocks_equals_one_block(monkeypatch):
    from softcls_jax.engine import evaluate

    trainer = _trainer(engine.Layout(("ce", "mse"), (0.1, 0.3), (0, 5)))
    state, _ = trainer.run_chunk(trainer.init_state(), 3)
    one_block = jax.device_get(trainer._eval_fn(state, trainer.data, trainer.loss_ids))
    rows = digits().x_train.shape[0] + digits().x_test.shape[0]
    monkeypatch.setattr(evaluate, "EVAL_LOGITS_BYTES", 2 * rows * 10 * 4)  # blocks of 2 configs
    fn = jax.jit(functools.partial(evaluate.evaluate, trainer.program))
    blocked = jax.device_get(fn(state, trainer.data, trainer.loss_ids))
    chex.assert_trees_all_close(blocked, one_block, rtol=1e-6)


def test_a_models_cpu_block_sets_the_default_blocks_and_0_means_one_block():
    d = digits()
    grid = engine.Layout(("ce", "mse"), (0.01, 0.1, 0.3), (0, 1))
    m = models.make_model("linear", d.num_features, d.num_classes)
    blocks = lambda cpu_block: (
        engine.Trainer(
            dataclasses.replace(m, cpu_block=cpu_block), d, grid, engine.TrainSettings()
        ).layout.num_blocks
    )
    # cpu_block counts one seed's configs: 2 per block is one rate of each loss, both seeds
    assert (blocks(None), blocks(0), blocks(2), blocks(1)) == (1, 1, 3, 3)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="cpu_block must be an integer >= 0 or None"):
            dataclasses.replace(m, cpu_block=bad)


def test_the_collector_is_paused_only_while_a_program_is_built():
    from softcls_jax.engine.driver import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failing trace")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a caller's own setting is kept
    finally:
        gc.enable()
