"""Trained configs back from a grid: the selected setting's models, ready to use, and on disk.

A sweep is also how a user trains the model they will use. :func:`selected` picks, per loss, the
configs of the setting chosen on validation (one per seed) out of a finished run; each
:class:`Trained` holds that config's parameters and non-parameter variables and builds the
``nnx.Module`` in eval mode. :func:`save` writes them into a workdir (``trained/``), :func:`load`
reads one back.

Files: ``trained/index.json`` lists each saved config (its loss, axis values, seed and file);
``trained/<loss>_seed<seed>.msgpack`` holds ``{"params": ..., "model_state": ...}`` as plain nested
arrays (flax's msgpack), written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx, serialization

from softcls_jax import results
from softcls_jax.engine.layout import ARCH_AXES
from softcls_jax.files import atomic_write
from softcls_jax.models import Model

DIRECTORY = "trained"
INDEX = "index.json"


@dataclasses.dataclass(frozen=True)
class Trained:
    """One trained config.

    Attributes:
      config: its loss, axis values and seed (a record's keys in ``results.json``).
      params: its parameters (an ``nnx.State`` of host arrays).
      model_state: its non-parameter variables (BatchNorm statistics, …); ``()`` if stateless.
      model: the :class:`~softcls_jax.models.Model` it was trained as.
    """

    config: dict[str, Any]
    params: Any
    model_state: Any
    model: Model

    def module(self) -> nnx.Module:
        """The trained network as an ``nnx.Module`` in eval mode (running statistics, no dropout)."""
        if self.model.module is None:
            raise ValueError(f"{self.model.name} has no module; use apply(x)")
        return self.model.module(self.params, self.model_state)

    def apply(self, x: Any) -> jax.Array:
        """Logits of ``x (N, D)`` in eval mode, as the grid evaluated them."""
        if self.model.stateful:
            return self.model.apply_eval(self.params, self.model_state, x)
        return self.model.apply(self.params, x)


def selected(
    document: Mapping[str, Any], params: Any, model_state: Any, model: Model
) -> dict[str, list[Trained]]:
    """Per loss, the configs of the setting in ``document["selection"]`` (one per seed), from the
    run's ``params`` / ``model_state`` (leaves ``(S, K, ...)`` in the document's config order)."""
    records = document["configs"]
    axes = results.axis_names(records)
    num_seeds = len({r["seed"] for r in records})
    per_seed = len(records) // num_seeds
    out: dict[str, list[Trained]] = {}
    for choice in document["selection"]["per_loss"]:
        for i, r in enumerate(records):
            if r["loss"] == choice["loss"] and all(r[a] == choice[a] for a in axes):
                s, k = divmod(i, per_seed)
                take = lambda tree, s=s, k=k: jax.tree.map(lambda x: np.asarray(x[s, k]), tree)
                config = {key: r[key] for key in ("loss", *axes, "seed")}
                out.setdefault(choice["loss"], []).append(
                    Trained(config, take(params), take(model_state), model)
                )
    return out


def _file_name(config: Mapping[str, Any]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(config["loss"]))
    return f"{stem}_seed{config['seed']}.msgpack"


def save(workdir: str | pathlib.Path, chosen: Mapping[str, Sequence[Trained]]) -> None:
    """Writes every config of ``chosen`` into ``workdir/trained`` (atomically) with an index."""
    directory = pathlib.Path(workdir) / DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    index = []
    for configs in chosen.values():
        for t in configs:
            name = _file_name(t.config)
            state = t.model_state if t.model.stateful else {}
            payload = {"params": nnx.to_pure_dict(t.params), "model_state": state}
            atomic_write(directory / name, serialization.msgpack_serialize(payload))
            index.append({**t.config, "file": name})
    atomic_write(directory / INDEX, json.dumps(index, indent=1).encode())


def load(
    workdir: str | pathlib.Path,
    model: Model | Callable[..., Model],
    loss: str | None = None,
    seed: int | None = None,
) -> Trained:
    """A saved config of ``workdir/trained`` as :class:`Trained`, with ``model`` (the one it was
    trained as, or for a grid over architectures the factory ``model(width=…, depth=…)``, called
    with the saved config's values; ``softcls_jax.sweep.load_trained`` rebuilds either for a CLI
    workdir).

    Args:
      loss: which loss's selected setting (default: the only one, or the first saved).
      seed: which seed (default: the first saved).

    Raises:
      ValueError: no such workdir, loss or seed, or files that do not fit ``model``.
    """
    directory = pathlib.Path(workdir) / DIRECTORY
    try:
        index = json.loads((directory / INDEX).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{directory}: no trained configs ({e})") from None
    matches = [
        c
        for c in index
        if (loss is None or c["loss"] == loss) and (seed is None or c["seed"] == seed)
    ]
    if not matches:
        have = [(c["loss"], c["seed"]) for c in index]
        raise ValueError(f"{directory}: no trained config of loss={loss}, seed={seed}; has {have}")
    entry = dict(matches[0])
    if not isinstance(model, Model):  # a factory of the architectures of a plan
        model = model(**{k: int(entry[k]) for k in ARCH_AXES if k in entry})
    raw = serialization.msgpack_restore((directory / entry.pop("file")).read_bytes())
    params = jax.eval_shape(model.init, jax.random.key(0))
    state = jax.eval_shape(model.init_state, jax.random.key(0)) if model.stateful else ()
    expected = [a.shape for a in jax.tree.leaves((params, state))]
    try:
        nnx.replace_by_pure_dict(params, raw["params"])
        if model.stateful:
            state = serialization.from_state_dict(state, raw["model_state"])
            state = jax.tree.map(np.asarray, state)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(
            f"{directory}: the saved config does not fit model {model.name}: {e}"
        ) from None
    leaves = jax.tree.leaves((params, state))
    filled = all(isinstance(a, np.ndarray | jax.Array) for a in leaves)  # not left abstract
    if not filled or [np.shape(a) for a in leaves] != expected:
        raise ValueError(f"{directory}: the saved variables do not fit model {model.name}")
    return Trained(entry, params, state, model)
