r"""Checks autodiff against every closed-form gradient over a grid of shapes and dtypes.

  python -m experiments.verify
  python -m experiments.verify --batch_sizes=1,64 --num_classes=2,1000 --dtypes=float64

Prints a table of the largest absolute and relative error of each check and exits with status 1 if
any check exceeds its tolerance (float64: 1e-10, float32: 1e-5, absolute).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from softcls_jax import gradients as G
from softcls_jax import losses
from softcls_jax.labels import one_hot

from .cli import parse_flags

TOLERANCES = {"float64": 1e-10, "float32": 1e-5}
CLAIMS = {  # comparison → claim id (HB21: Hui & Belkin's rescaled square loss)
    "ce_grad = softmax(o) - y": "C8",
    "mse_grad = J^T 2(p - y)": "C8",
    "square_loss_grad (k=M=1)": "HB21",
    "square_loss_grad (k=3, M=5)": "HB21",
    "softmax_jacobian": "C8",
    "dp_p/dz_p = p_p(1 - p_p)": "C11",
    "CE target path = p_p - 1": "C11",
    "MSE target path = -2p(1-p)^2": "C11",
    "(p - y) x^T, kernel": "C9",
    "(p - y), bias": "C9",
    "GD step = optax.sgd step": "C9",
}


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison: ``max |autodiff - closed form|`` over a batch."""

    name: str
    claim: str
    dtype: str
    batch: int
    classes: int
    labels: str
    max_abs: float
    max_rel: float

    @property
    def passed(self) -> bool:
        return self.max_abs <= TOLERANCES[self.dtype]


def _errors(got: jax.Array, want: jax.Array) -> tuple[float, float]:
    diff = jnp.abs(got - want)
    scale = jnp.maximum(jnp.max(jnp.abs(want)), jnp.finfo(want.dtype).tiny)
    return float(jnp.max(diff)), float(jnp.max(diff) / scale)


def _loss_grad(loss_fn: Callable, logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jax.grad(lambda o: jnp.sum(loss_fn(o, labels)))(logits)


def _comparisons(logits: jax.Array, labels: jax.Array, x: jax.Array) -> dict:
    """Name → (autodiff value, closed form) for one batch; :data:`CLAIMS` names each one's claim."""
    num_classes = logits.shape[-1]
    square_3_5 = functools.partial(losses.square_loss, k=3.0, m=5.0)
    out = {
        "ce_grad = softmax(o) - y": (
            _loss_grad(losses.cross_entropy, logits, labels),
            G.ce_grad(logits, labels),
        ),
        "mse_grad = J^T 2(p - y)": (
            _loss_grad(losses.mse, logits, labels),
            G.mse_grad(logits, labels),
        ),
        "square_loss_grad (k=M=1)": (
            _loss_grad(losses.square_loss, logits, labels),
            G.square_loss_grad(logits, labels),
        ),
        "square_loss_grad (k=3, M=5)": (
            _loss_grad(square_3_5, logits, labels),
            G.square_loss_grad(logits, labels, k=3.0, m=5.0),
        ),
        "softmax_jacobian": (
            jax.vmap(jax.jacfwd(jax.nn.softmax))(logits),
            G.softmax_jacobian(logits),
        ),
    }
    if labels.ndim == 1:  # the target-path terms are defined for a single true class
        p_t = jnp.take_along_axis(jax.nn.softmax(logits), labels[:, None], axis=1)[:, 0]
        target_logit_grad = lambda o, y: jax.grad(lambda z: jax.nn.softmax(z)[y])(o)[y]
        d_pt = jax.vmap(target_logit_grad)(logits, labels)
        y = one_hot(labels, num_classes, logits.dtype)
        dl_dpt = jax.vmap(jax.grad(lambda q, t: jnp.sum((q - t) ** 2)))(jax.nn.softmax(logits), y)
        dl_dpt = jnp.take_along_axis(dl_dpt, labels[:, None], axis=1)[:, 0]
        out["dp_p/dz_p = p_p(1 - p_p)"] = (d_pt, G.softmax_target_derivative(p_t))
        out["CE target path = p_p - 1"] = (
            jnp.take_along_axis(out["ce_grad = softmax(o) - y"][0], labels[:, None], 1)[:, 0],
            G.ce_target_path_grad(p_t),
        )
        out["MSE target path = -2p(1-p)^2"] = (dl_dpt * d_pt, G.mse_target_path_grad(p_t))
    # C9: softmax regression on features x with these labels.
    params = {
        "kernel": 0.5
        * jnp.sin(jnp.arange(x.shape[1] * num_classes, dtype=x.dtype)).reshape(
            x.shape[1], num_classes
        ),
        "bias": jnp.linspace(-1, 1, num_classes, dtype=x.dtype),
    }
    mean_ce = lambda p: jnp.mean(losses.cross_entropy(G.linear_logits(p, x), labels))
    auto = jax.grad(mean_ce)(params)
    closed = G.linear_model_grads(params, x, labels)
    out["(p - y) x^T, kernel"] = (auto["kernel"], closed["kernel"])
    out["(p - y), bias"] = (auto["bias"], closed["bias"])
    sgd = optax.sgd(0.5)
    updates, _ = sgd.update(auto, sgd.init(params), params)
    stepped_optax = optax.apply_updates(params, updates)
    stepped_hand = G.gd_step(params, x, labels, 0.5)
    out["GD step = optax.sgd step"] = (stepped_optax["kernel"], stepped_hand["kernel"])
    return out


def run_checks(
    batch_sizes: Sequence[int],
    class_counts: Sequence[int],
    dtypes: Sequence[str],
    seed: int = 0,
    features: int = 16,
) -> list[Check]:
    """Runs every comparison over the grid and returns one :class:`Check` per (comparison, setting)."""
    checks = []
    for dtype in dtypes:
        if dtype not in TOLERANCES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(TOLERANCES)}")
        with jax.enable_x64(dtype == "float64"):
            for batch in batch_sizes:
                for classes in class_counts:
                    key = jax.random.fold_in(jax.random.key(seed), batch * 100_003 + classes)
                    k_o, k_y, k_x = jax.random.split(key, 3)
                    logits = 4.0 * jax.random.normal(k_o, (batch, classes), dtype)
                    x = jax.random.normal(k_x, (batch, features), dtype)
                    int_labels = jax.random.randint(k_y, (batch,), 0, classes)
                    soft = jax.nn.softmax(jax.random.normal(k_y, (batch, classes), dtype))
                    for form, labels in (("int", int_labels), ("probs", soft)):
                        # One compiled program per grid point, not one per primitive and shape.
                        compared = jax.jit(_comparisons)(logits, labels, x)
                        for name, (got, want) in compared.items():
                            max_abs, max_rel = _errors(got, want)
                            checks.append(
                                Check(
                                    name,
                                    CLAIMS[name],
                                    dtype,
                                    batch,
                                    classes,
                                    form,
                                    max_abs,
                                    max_rel,
                                )
                            )
    return checks


def summarise(checks: Sequence[Check]) -> list[dict]:
    """Worst case of each (comparison, dtype) over the grid, as table rows."""
    rows: dict[tuple[str, str], dict] = {}
    for c in checks:
        row = rows.setdefault(
            (c.name, c.dtype),
            {
                "check": c.name,
                "claim": c.claim,
                "dtype": c.dtype,
                "cases": 0,
                "max_abs": 0.0,
                "max_rel": 0.0,
                "tolerance": TOLERANCES[c.dtype],
                "passed": True,
            },
        )
        row["cases"] += 1
        row["max_abs"] = max(row["max_abs"], c.max_abs)
        row["max_rel"] = max(row["max_rel"], c.max_rel)
        row["passed"] = row["passed"] and c.passed
    return list(rows.values())


def format_table(rows: Sequence[dict]) -> str:
    header = f"{'check':<30} {'claim':<5} {'dtype':<8} {'cases':>5} {'max abs':>10} {'max rel':>10} {'tol':>7}  ok"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['check']:<30} {r['claim']:<5} {r['dtype']:<8} {r['cases']:>5} {r['max_abs']:>10.2e} "
            f"{r['max_rel']:>10.2e} {r['tolerance']:>7.0e}  {'yes' if r['passed'] else 'NO'}"
        )
    return "\n".join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["1", "32", "256"], "Batch sizes N of the random logits.")
flags.DEFINE_list("num_classes", ["2", "10", "100"], "Class counts C of the random logits.")
flags.DEFINE_list("dtypes", ["float32", "float64"], "Dtypes to check: float32 and/or float64.")
flags.DEFINE_integer("seed", 0, "Seed of the random logits, labels and features.")
flags.DEFINE_string("json_out", None, "If set, also write the table rows to this JSON file.")


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        batch_sizes = [int(b) for b in FLAGS.batch_sizes]
        class_counts = [int(c) for c in FLAGS.num_classes]
        if min(batch_sizes) < 1 or min(class_counts) < 1:
            raise ValueError("--batch_sizes and --num_classes must be positive integers")
        checks = run_checks(batch_sizes, class_counts, FLAGS.dtypes, FLAGS.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    rows = summarise(checks)
    print(format_table(rows))
    failed = [r for r in rows if not r["passed"]]
    print(f"\n{len(checks)} comparisons, {len(rows)} rows, {len(failed)} over tolerance")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(rows, f, indent=2)
    sys.exit(1 if failed else 0)


def command() -> None:
    """The console command (pyproject.toml's ``[project.scripts]``)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    command()
