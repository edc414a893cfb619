"""Run in a subprocess with several forced host devices: 1 device vs all devices must agree."""

import json
import sys

import jax
import numpy as np

from softcls_jax import data, engine, models


def main() -> None:
    devices = jax.devices()
    d = data.load("digits")
    model = models.make_model("mlp", d.num_features, d.num_classes, hidden=(16,))
    # 3 rates: not a multiple of 4 devices
    grid = engine.Layout(("ce", "mse"), (0.01, 0.1, 0.5), (0, 1))
    settings = engine.TrainSettings("sgd", 60, 64, 20)
    out = {"device_count": len(devices)}
    runs = {}
    for name, devs in (("one", devices[:1]), ("all", devices)):
        trainer = engine.Trainer(model, d, grid, settings, devices=devs)
        state, history = trainer.train()
        leaves = jax.tree.leaves(trainer.host_state(state).params)
        runs[name] = {
            "padded_shape": list(trainer.layout.padded_shape),
            "sharding": str(jax.tree.leaves(state.params)[0].sharding),
            "history": history,
            "params": [np.asarray(x)[:, trainer.layout.real_k] for x in leaves],
            "diverged": trainer.diverged_steps(state),
        }
    one, all_ = runs["one"], runs["all"]
    out["padded_shape"] = {"one": one["padded_shape"], "all": all_["padded_shape"]}
    out["sharding_all"] = all_["sharding"]
    out["max_metric_diff"] = max(
        float(np.nanmax(np.abs(a[m] - b[m])))
        for a, b in zip(one["history"], all_["history"], strict=True)
        for m in engine.METRICS
        if np.isfinite(a[m]).any()
    )
    out["max_param_diff"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(one["params"], all_["params"], strict=True)
    )
    out["shapes"] = [
        list(one["history"][-1]["test_accuracy"].shape),
        list(all_["history"][-1]["test_accuracy"].shape),
    ]
    out["diverged_equal"] = bool(np.array_equal(one["diverged"], all_["diverged"]))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
