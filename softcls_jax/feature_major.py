"""A user's dense layers computed feature-major, as the built-in MLP computes its own.

The engine vmaps a model over many configs that share one minibatch. The built-in ``mlp`` keeps its
activations ``(features, N)`` through the whole network (``models._dense_feature_major``), so every
config's products have the batch ``N`` as their wide, vectorised dimension, never the 10 classes. A
user's ``nnx.Linear`` stack computes ``(N, features)`` and its steps ran about 40 % slower in the
same grid (docs/performance.md). Swapping one layer at a time cannot keep the layout between layers (the user's
activation functions sit in between), so :func:`feature_major` rewrites the traced function instead.

The rewrite reads the function's jaxpr and evaluates it again, keeping a second, transposed form of
each 2-D value where that is free:

* a ``dot_general`` ``(N, D) · (D, H)`` whose left operand has a transposed form ``(D, N)`` is
  computed as ``Wᵀ · xᵀ`` and keeps only its transposed form ``(H, N)``;
* an elementwise primitive (bias add, ReLU's max, tanh, GELU's polynomial …) with an operand held
  transposed is computed on the transposed operands (transposition commutes with it), its other
  operands transposed (a bias ``(1, H)`` becomes ``(H, 1)``, a broadcast XLA folds);
* a ``custom_jvp`` function made only of such primitives (``jax.nn.relu``) runs on the transposed
  form too, keeping its own derivative rule (whose jaxpr is evaluated the same way);
* nested ``jit`` calls are inlined; any other primitive gets the value in its normal layout, one
  transpose materialised where needed.

A program with a custom derivative that cannot be replayed is left as traced: a ``custom_vjp``
anywhere, or a ``custom_jvp`` rule JAX does not give out as a jaxpr (a rule that closes over a value
computed inside the model is traced only when differentiated, after the rewrite's trace ended).

The model's input is given both ways, so a network whose first op is a dense layer runs
feature-major from its first product to its logits. Values are the same as the function's own up to
float rounding in the products' summation order; gradients come from JAX's autodiff of the rewritten
program (tested against the original to rtol 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr, JaxprEqn, Literal, jaxprs_in_params

# primitives that act value by value (rank-0 operands and size-1 dimensions broadcast)
ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type copy
    cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt integer_pow is_finite
    le lgamma log log1p logistic lt max min mul ne neg nextafter not or pow reduce_precision rem
    round rsqrt select_n sign sin sinh sqrt square sub tan tanh xor""".split()
)
INLINED = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr"}  # the inner jaxpr's param


def feature_major(fn: Callable[[Any, jax.Array], Any]) -> Callable[[Any, jax.Array], Any]:
    """``fn`` with its dense layers computed on transposed, feature-major activations.

    Args:
      fn: ``(params, x (N, D)) -> logits (N, C)``; its jaxpr is traced at each call (at trace
        time under ``jit``), so it may merge an NNX module.

    Returns:
      A function of the same arguments returning the same values, to float rounding.

    Example:
      >>> f = lambda w, x: jax.nn.relu(x @ w) @ w.T
      >>> w, x = jnp.ones((3, 4)), jnp.ones((5, 3))
      >>> bool(jnp.allclose(feature_major(f)(w, x), f(w, x)))
      True
    """

    def rewritten(params: Any, x: jax.Array) -> Any:
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, x)
        if not _replayable(closed.jaxpr):
            return fn(params, x)
        leaves = jax.tree.leaves((params, x))
        ins = [_Value(a) for a in leaves]
        # the data is offered transposed too (computed only if used): a first dense layer starts there
        ins[-1].offered = x.ndim == 2
        outs = _run(closed.jaxpr, [_Value(c) for c in closed.consts], ins)
        return jax.tree.unflatten(jax.tree.structure(out_shape), [v.normal() for v in outs])

    return rewritten


class _Value:
    """A value in its normal form ``n`` and/or, for a 2-D value, its transposed form ``t``;
    ``offered``: a dense layer may ask for ``t`` although it is not held yet (the data)."""

    __slots__ = ("n", "offered", "t")

    def __init__(self, n: Any = None, t: Any = None):
        self.n, self.t, self.offered = n, t, False

    def normal(self) -> Any:
        if self.n is None:
            self.n = self.t.T
        return self.n

    def transposed(self) -> Any:
        if self.t is None:
            self.t = self.n.T
        return self.t


def _run(jaxpr: Jaxpr, consts: list[_Value], args: list[_Value]) -> list[_Value]:
    env: dict[Any, _Value] = {}
    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    read = lambda v: _Value(v.val) if isinstance(v, Literal) else env[v]
    for eqn in jaxpr.eqns:
        outs = _equation(eqn, [read(v) for v in eqn.invars])
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _equation(eqn: JaxprEqn, ins: list[_Value]) -> list[_Value]:
    name = eqn.primitive.name
    inner = eqn.params.get(INLINED.get(name, ""))
    if isinstance(inner, ClosedJaxpr):
        return _run(inner.jaxpr, [_Value(c) for c in inner.consts], ins)
    if name == "dot_general" and _dense_transposable(eqn, ins):
        contract, _ = eqn.params["dimension_numbers"]
        precision = eqn.params.get("precision")
        if isinstance(precision, tuple):  # one per operand: they swap places
            precision = precision[::-1]
        out_t = jax.lax.dot_general(  # (x W)ᵀ = Wᵀ xᵀ: (H, N)
            ins[1].normal(),
            ins[0].transposed(),
            (((contract[1][0],), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=eqn.params.get("preferred_element_type"),
        )
        return [_Value(t=out_t)]
    if _elementwise_transposable(eqn, ins):
        operands = _transposed_operands(eqn, ins)
        if name == "custom_jvp_call":
            return [_Value(t=o) for o in _custom_jvp_transposed(eqn, operands)]
        return [_Value(t=o) for o in _bind(eqn, operands)]
    return [_Value(o) for o in _bind(eqn, [v.normal() for v in ins])]


def _bind(eqn: JaxprEqn, operands: list[Any]) -> list[Any]:
    """The equation's primitive applied to ``operands``, as ``jax.core.eval_jaxpr`` applies it."""
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def _dense_transposable(eqn: JaxprEqn, ins: list[_Value]) -> bool:
    """``(N, D) · W``, ``D`` contracted with one of ``W``'s two dims, the left operand held
    transposed."""
    contract, batch = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval for v in eqn.invars)
    return (
        (ins[0].t is not None or ins[0].offered)
        and lhs.ndim == 2
        and rhs.ndim == 2
        and tuple(contract[0]) == (1,)
        and len(contract[1]) == 1
        and tuple(batch[0]) == ()
        and eqn.params.get("out_sharding") is None
    )


def _elementwise_transposable(eqn: JaxprEqn, ins: list[_Value]) -> bool:
    """An elementwise equation of 2-D values and scalars, one of its operands held transposed."""
    if not any(v.t is not None for v in ins):
        return False
    if not all(v.aval.ndim == 2 for v in eqn.outvars):
        return False
    if not all(v.aval.ndim in (0, 2) for v in eqn.invars):
        return False
    if eqn.primitive.name == "custom_jvp_call":
        return _elementwise_jaxpr(eqn.params["call_jaxpr"].jaxpr)
    return eqn.primitive.name in ELEMENTWISE


def _transposed_operands(eqn: JaxprEqn, ins: list[_Value]) -> list[Any]:
    return [
        v.transposed() if var.aval.ndim == 2 else v.normal()
        for var, v in zip(eqn.invars, ins, strict=True)
    ]


def _elementwise_jaxpr(jaxpr: Jaxpr) -> bool:
    """Whether every equation of ``jaxpr`` (through nested calls) is elementwise."""
    for eqn in jaxpr.eqns:
        inner = eqn.params.get(INLINED.get(eqn.primitive.name, ""))
        if isinstance(inner, ClosedJaxpr):
            if not _elementwise_jaxpr(inner.jaxpr):
                return False
        elif eqn.primitive.name not in ELEMENTWISE:
            return False
    return True


def _custom_jvp_transposed(eqn: JaxprEqn, operands: list[Any]) -> list[Any]:
    """A ``custom_jvp`` function of elementwise math (``jax.nn.relu``) on transposed operands, its
    own derivative rule kept: the rule's jaxpr evaluated the same way (:func:`_replayable` checked
    that JAX gives it out)."""
    closed = eqn.params["call_jaxpr"]
    two_d = [var.aval.ndim == 2 for var in eqn.invars]
    wrap = lambda xs: [_Value(t=x) if d else _Value(x) for x, d in zip(xs, two_d, strict=True)]

    @jax.custom_jvp
    def call(*xs: Any) -> tuple[Any, ...]:
        outs = _run(closed.jaxpr, [_Value(c) for c in closed.consts], wrap(xs))
        return tuple(v.transposed() for v in outs)

    @call.defjvp
    def call_jvp(primals: tuple, tangents: tuple) -> tuple:
        jaxpr, consts, out_zeros = _jvp_jaxpr(eqn)
        k = eqn.params["num_consts"]
        ins = wrap(primals)[k:] + wrap(tangents)[k:]
        outs = [v.transposed() for v in _run(jaxpr, [_Value(c) for c in consts], ins)]
        out, nonzero = outs[: len(out_zeros)], iter(outs[len(out_zeros) :])
        out_dot = [
            jnp.zeros_like(o) if z else next(nonzero) for o, z in zip(out, out_zeros, strict=True)
        ]
        return tuple(out), tuple(out_dot)

    return list(call(*operands))


def _jvp_jaxpr(eqn: JaxprEqn) -> tuple[Jaxpr, list[Any], list[bool]] | None:
    """The jaxpr of a ``custom_jvp_call``'s rule for nonzero tangents (traced at the call's own
    shapes): ``(jaxpr of primals and tangents, its consts, which output tangents are zero)``, or
    None where it cannot be had now: a rule closing over a value of the finished trace, or a JAX
    that does not give it out this way (``jvp_jaxpr_fun`` is not public API)."""
    try:
        n = len(eqn.invars) - eqn.params["num_consts"]
        jaxpr, consts, out_zeros = eqn.params["jvp_jaxpr_fun"].call_wrapped(*[False] * n)
    except Exception:
        return None
    if not isinstance(jaxpr, Jaxpr) or any(isinstance(c, jax.core.Tracer) for c in consts):
        return None
    return jaxpr, list(consts), list(out_zeros)


def _replayable(jaxpr: Jaxpr) -> bool:
    """Whether every custom derivative in ``jaxpr`` (through every nested jaxpr) can be evaluated
    again after its trace: no ``custom_vjp`` (its backward pass may close over the trace's values),
    and every ``custom_jvp`` rule given out as a jaxpr (:func:`_jvp_jaxpr`)."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if "custom_vjp" in name:
            return False
        if name == "custom_jvp_call" and _jvp_jaxpr(eqn) is None:
            return False
        if not all(_replayable(inner) for inner in jaxprs_in_params(eqn.params)):
            return False
    return True
