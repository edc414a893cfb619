"""Grids over architectures: one compiled program per architecture, one results document.

An axis that changes array shapes (:data:`ARCH_AXES`: ``width``, ``depth``) cannot be data in one
program. A :class:`Plan` splits a layout into its architectures — every combination of those axes'
values — each a sub-grid of the other axes trained by its own program, one after the other. The
parts' records are merged back in the full layout's config order, so the results document,
summary, plots and TensorBoard runs are those of one grid, and selection on validation runs across
every axis, the architecture included.

This is the machinery that also trains a grid in several blocks of configs: a part is a sub-grid
with its own model, compiled program and checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from softcls_jax import results, trained
from softcls_jax.engine.layout import ARCH_AXES, Layout
from softcls_jax.models import Model

ModelFor = Callable[..., Model]  # (width=..., depth=...) -> Model


@dataclasses.dataclass(frozen=True)
class Part:
    """One architecture of a plan: its axis values and the sub-grid of the other axes."""

    index: int
    architecture: tuple[tuple[str, float], ...]
    layout: Layout


@dataclasses.dataclass(frozen=True)
class Plan:
    """The parts a grid trains one after the other (one part without architecture axes)."""

    layout: Layout
    parts: tuple[Part, ...]

    @classmethod
    def of(cls, layout: Layout) -> Plan:
        """``layout`` split into one part per combination of its architecture axes' values."""
        arch = [(n, v) for n, v in layout.axes if n in ARCH_AXES]
        rest = tuple((n, v) for n, v in layout.axes if n not in ARCH_AXES)
        names = [n for n, _ in arch]
        sub = dataclasses.replace(layout, axes=rest)
        combos = itertools.product(*(v for _, v in arch))
        parts = tuple(
            Part(i, tuple(zip(names, map(float, c), strict=True)), sub)
            for i, c in enumerate(combos)
        )
        return cls(layout, parts)

    @property
    def architectures(self) -> bool:
        """Whether the grid has architecture axes (several programs, or one named architecture)."""
        return bool(self.parts[0].architecture)

    def checkpoint(self, path: str | pathlib.Path | None, part: Part) -> pathlib.Path | None:
        """Part ``part``'s checkpoint directory: ``path`` itself without architecture axes, else
        ``NAME.archI`` beside it."""
        if path is None or not self.architectures:
            return None if path is None else pathlib.Path(path)
        path = pathlib.Path(path)
        return path.with_name(f"{path.name}.arch{part.index}")


def model_of(model_for: ModelFor, part: Part) -> Model:
    """The model of ``part``: ``model_for(width=…, depth=…)`` with its architecture's values as
    ints; ValueError naming the axis if the factory does not take it."""
    kwargs = {name: int(v) for name, v in part.architecture}
    try:
        return model_for(**kwargs)
    except TypeError as e:
        raise ValueError(
            f"the model factory does not take the architecture axes {sorted(kwargs)}: {e}"
        ) from None


def _record_key(record: Mapping[str, Any], names: Sequence[str]) -> tuple:
    return (record["loss"], record["seed"], *(record[n] for n in names))


def merge_records(plan: Plan, documents: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Every part's records with their architecture's values, in the full layout's config order
    (the keys of each record in the full layout's axis order)."""
    names = plan.layout.axis_names
    by_key = {}
    for part, doc in zip(plan.parts, documents, strict=True):
        for r in doc["configs"]:
            values = {**r, **dict(part.architecture)}
            by_key[_record_key(values, names)] = values
    merged = []
    for config in plan.layout.configs():
        head = config.as_dict()
        r = by_key[_record_key(head, names)]
        merged.append({**head, **{k: v for k, v in r.items() if k not in head}})
    return merged


def merge_documents(
    plan: Plan, documents: Sequence[Mapping[str, Any]], select_on: str
) -> dict[str, Any]:
    """The one results document of a plan's parts: merged records, selection over every axis,
    timing summed over the parts (``compiled_chunks``: one per architecture and chunk length)."""
    records = merge_records(plan, documents)
    timing = {
        k: sum(d["timing"][k] for d in documents)
        for k in ("wall_s", "trace_s", "compile_s", "eval_s", "checkpoint_s", "compiled_chunks")
    }
    per_second = [d["timing"]["config_examples_per_s"] * d["timing"]["wall_s"] for d in documents]
    timing["config_examples_per_s"] = sum(per_second) / timing["wall_s"]
    timing["architectures"] = len(documents)
    first = documents[0]
    return {
        **{k: first[k] for k in ("schema", "settings", "environment")},
        "axes": list(plan.layout.axis_names),
        "configs": records,
        "selection": results.selection(records, select_on),
        "timing": timing,
    }


def selected(
    plan: Plan,
    document: Mapping[str, Any],
    parts: Sequence[tuple[Mapping[str, Any], Any, Any, Model]],
) -> dict[str, list[trained.Trained]]:
    """Per loss, the trained configs of the merged ``document``'s selection, each taken from its
    architecture's part (``(part document, params, model_state, model)`` per part)."""
    out: dict[str, list[trained.Trained]] = {}
    for choice in document["selection"]["per_loss"]:
        for part, (doc, params, state, model) in zip(plan.parts, parts, strict=True):
            if any(choice[n] != v for n, v in part.architecture):
                continue
            names = [n for n in part.layout.axis_names]
            own = {"per_loss": [{k: choice[k] for k in ("loss", *names)}]}
            for t in trained.selected({**doc, "selection": own}, params, state, model).get(
                choice["loss"], []
            ):
                config = {**t.config, **dict(part.architecture)}
                out.setdefault(choice["loss"], []).append(dataclasses.replace(t, config=config))
    return out
