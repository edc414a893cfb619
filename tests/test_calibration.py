"""softcls_jax.calibration: T per config fitted on validation, test measured before and after."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softcls_jax import calibration, data, engine, metrics, models, runner


@pytest.fixture(scope="module")
def trained():
    dataset = data.with_validation(data.standardized(data.load("digits")), 0.2, seed=0)
    model = models.make_model("mlp", dataset.num_features, dataset.num_classes, hidden=(32,))
    layout = engine.Layout(("ce", "square"), (0.03, 0.3), (0, 1))
    run = runner.run(model, dataset, layout, engine.TrainSettings("sgd", 150, 64, 150))
    return dataset, model, layout, run


def test_each_config_gets_the_temperature_that_minimises_its_validation_nll(trained):
    dataset, model, layout, run = trained
    rows, bins = calibration.calibrate(
        model,
        run.params,
        layout,
        run.document["configs"],
        dataset.x_val,
        dataset.y_val,
        dataset.x_test,
        dataset.y_test,
    )
    assert [(r["loss"], r["learning_rate"], r["seed"]) for r in rows] == [
        (c.loss, c.learning_rate, c.seed) for c in layout.configs()
    ]
    grid = np.exp(np.linspace(np.log(0.01), np.log(100.0), 2001))
    for (s, k), row in zip(np.ndindex(*layout.shape), rows, strict=True):
        params = jax.tree.map(lambda a, s=s, k=k: a[s, k], run.params)
        val = model.apply(params, jnp.asarray(dataset.x_val))
        nlls = [float(metrics.nll(val / t, jnp.asarray(dataset.y_val))) for t in grid[::20]]
        best = grid[::20][int(np.argmin(nlls))]
        assert row["temperature"] == pytest.approx(best, rel=0.1)  # the brute-force minimiser
        test = model.apply(params, jnp.asarray(dataset.x_test))
        assert row["ece_before"] == pytest.approx(
            float(metrics.ece(test, dataset.y_test)), abs=1e-6
        )
        assert row["accuracy_before"] == row["accuracy_after"]
        assert row["nll_after"] <= row["nll_before"] + 0.05  # fitted on validation, not on test
    assert set(bins) == {"ce", "square"}


def test_keep_selects_configs_and_summarise_averages_seeds(trained):
    dataset, model, layout, run = trained
    keep = [c.learning_rate == 0.3 for c in layout.configs()]
    rows, _ = calibration.calibrate(
        model,
        run.params,
        layout,
        run.document["configs"],
        dataset.x_val,
        dataset.y_val,
        dataset.x_test,
        dataset.y_test,
        keep,
    )
    assert len(rows) == 4 and all(r["learning_rate"] == 0.3 for r in rows)
    summary = calibration.summarise(rows)
    assert [s["loss"] for s in summary] == ["ce", "square"]
    ce = [r for r in rows if r["loss"] == "ce"]
    assert summary[0]["models"] == 2
    assert summary[0]["ece_before"] == pytest.approx(np.mean([r["ece_before"] for r in ce]))
    assert summary[0]["ece_before_std"] == pytest.approx(np.std([r["ece_before"] for r in ce]))


def test_permuted_features_moves_columns_and_refuses_a_non_permutation():
    d = data.from_arrays(
        np.arange(12.0).reshape(4, 3),
        np.array([0, 1, 0, 1]),
        np.arange(6.0).reshape(2, 3),
        np.array([0, 1]),
    )
    p = data.permuted_features(d, np.array([2, 0, 1]))
    np.testing.assert_array_equal(p.x_train, d.x_train[:, [2, 0, 1]])
    np.testing.assert_array_equal(p.x_test, d.x_test[:, [2, 0, 1]])
    np.testing.assert_array_equal(p.y_train, d.y_train)
    with pytest.raises(ValueError, match="permutation of range"):
        data.permuted_features(d, np.array([0, 0, 1]))
