"""The benchmark's PyTorch contenders: each workload's net with the sweep's initial weights, trained
the two ways a PyTorch expert would write many small models.

* :func:`train_loop`: one ``torch.nn`` module and one ``torch.optim`` optimizer per config, config
  after config (the plain loop);
* :func:`train_func`: PyTorch's ensembling recipe: the configs' modules stacked with
  ``torch.func.stack_module_state``, the forward ``torch.vmap(functional_call)``, one backward for
  all configs, and SGD / Adam written over the stacked tensors with each config's learning rate
  broadcast along the config axis (``torch.optim`` takes one rate per parameter group, and scaling
  gradients does nothing under Adam). BatchNorm's running statistics are stacked buffers, updated
  per config inside the vmap.

Both start every config from the same weights (the sweep's config 0, copied by the ``*_net``
builders: Flax kernels ``(*k, C_in, C_out)`` become ``(C_out, C_in, *k)``, dense ``(in, out)``
becomes ``(out, in)``) and see the same minibatches, so their test accuracies agree with the
sweep's. Importing this module never imports torch: every function takes the ``torch`` module.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}  # optax.adam's and torch.optim.Adam's defaults


def load_torch() -> Any:
    """The ``torch`` module, or None when it is not installed (its contenders are then skipped)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# ------------------------------------------------------------------ weights from JAX


def _pure(tree: Any) -> Any:
    """An ``nnx.State`` or a pure dict (a stateful model's ``model_state``) as numpy arrays."""
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    return jax.tree.map(np.asarray, tree)


def _copy(torch, tensor, value: np.ndarray) -> None:
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(np.array(value, copy=True)))


def copy_linear(torch, layer, p: dict, rows_from: tuple[int, int] | None = None) -> None:
    """Flax ``kernel (in, out)`` / ``bias`` into ``layer``; ``rows_from = (spatial, C)`` permutes
    rows flattened ``(*spatial, C)`` in JAX to PyTorch's ``(C, *spatial)`` order."""
    w = p["kernel"]
    if rows_from is not None:
        spatial, channels = rows_from
        w = w.reshape(spatial, channels, -1).transpose(1, 0, 2).reshape(w.shape[0], -1)
    _copy(torch, layer.weight, w.T)
    _copy(torch, layer.bias, p["bias"])


def copy_conv(torch, layer, p: dict) -> None:
    """Flax conv ``kernel (*k, C_in, C_out)`` (and ``bias``, if any) into ``layer``."""
    nd = p["kernel"].ndim - 2
    _copy(torch, layer.weight, np.transpose(p["kernel"], (nd + 1, nd, *range(nd))))
    if "bias" in p:
        _copy(torch, layer.bias, p["bias"])


def copy_batch_norm(torch, layer, p: dict, s: dict) -> None:
    """``nnx.BatchNorm``'s ``scale``/``bias`` and running ``mean``/``var`` into ``layer``."""
    _copy(torch, layer.weight, p["scale"])
    _copy(torch, layer.bias, p["bias"])
    _copy(torch, layer.running_mean, s["mean"])
    _copy(torch, layer.running_var, s["var"])


# ------------------------------------------------------------------ the workloads' nets


def mlp_net(torch, params0) -> Any:
    """The reference MLP ``D-H-C`` (ReLU) with ``params0`` copied in."""
    p = _pure(params0)
    hidden, out = p["hidden"][0], p["out"]
    nn = torch.nn
    net = nn.Sequential(
        nn.Linear(*hidden["kernel"].shape), nn.ReLU(), nn.Linear(*out["kernel"].shape)
    )
    copy_linear(torch, net[0], hidden)
    copy_linear(torch, net[2], out)
    return net


def cnn_net(torch, name: str, params0) -> Any:
    """The ``cnn1d`` or ``cnn2d`` workload's CNN (NCL / NCHW) with ``params0`` copied in."""
    nn = torch.nn
    p = _pure(params0)
    convs = [p["convs"][i] for i in range(len(p["convs"]))]
    layers: list = []
    if name == "cnn1d":
        for c in convs:
            k, cin, cout = c["kernel"].shape
            layers += [nn.Conv1d(cin, cout, k, stride=2, padding=1), nn.ReLU()]
        dense = [p["out"]]
    else:
        for i, c in enumerate(convs):
            k, _, cin, cout = c["kernel"].shape
            layers += [
                nn.Conv2d(cin, cout, k, padding=k // 2 if i == 0 else 0),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        dense = [p["dense"][i] for i in range(len(p["dense"]))] + [p["out"]]
    layers.append(nn.Flatten())
    for i, d in enumerate(dense):
        layers.append(nn.Linear(*d["kernel"].shape))
        if i < len(dense) - 1:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    torch_convs = [m for m in net if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    for m, c in zip(torch_convs, convs, strict=True):
        copy_conv(torch, m, c)
    cout = convs[-1]["kernel"].shape[-1]
    torch_dense = [m for m in net if isinstance(m, nn.Linear)]
    for i, (m, d) in enumerate(zip(torch_dense, dense, strict=True)):
        copy_linear(torch, m, d, (d["kernel"].shape[0] // cout, cout) if i == 0 else None)
    return net


def tutorial_cnn_net(torch, params0) -> Any:
    """The CNN of Flax's NNX MNIST tutorial (:class:`experiments.workload.TutorialCNN`), NCHW."""
    nn = torch.nn
    p = _pure(params0)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    copy_conv(torch, net[0], p["conv1"])
    copy_conv(torch, net[3], p["conv2"])
    copy_linear(torch, net[7], p["linear1"], (49, 64))
    copy_linear(torch, net[9], p["linear2"])
    return net


def resnet_net(torch, params0, state0) -> Any:
    """:class:`softcls_jax.resnet.ResNet` in PyTorch (NCHW), weights and BatchNorm statistics
    copied in. BatchNorm as Flax's: ``momentum=0.01`` (PyTorch's 0.1 is Flax's 0.9) and eps 1e-5;
    PyTorch updates the running variance with the unbiased batch variance, Flax with the biased one
    (a relative difference of 1/(N·H·W - 1) per update)."""
    return _resnet_class(torch)(_pure(params0), _pure(state0))


@functools.cache
def _resnet_class(torch) -> type:
    """The PyTorch ResNet class (one class per process: ``stack_module_state`` stacks only modules
    of one class)."""
    nn = torch.nn

    def conv_bn(pc, pb, sb, stride):
        k, _, cin, cout = pc["kernel"].shape
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.01)
        copy_conv(torch, conv, pc)
        copy_batch_norm(torch, bn, pb, sb)
        return nn.Sequential(conv, bn)

    class Block(nn.Module):
        def __init__(self, pb: dict, sb: dict, stride: int):
            super().__init__()
            self.a = conv_bn(pb["conv1"], pb["bn1"], sb["bn1"], stride)
            self.b = conv_bn(pb["conv2"], pb["bn2"], sb["bn2"], 1)
            self.skip = (
                conv_bn(pb["shortcut"], pb["bn_shortcut"], sb["bn_shortcut"], stride)
                if "shortcut" in pb
                else nn.Identity()
            )

        def forward(self, x):
            return torch.relu(self.b(torch.relu(self.a(x))) + self.skip(x))

    class ResNet(nn.Module):
        def __init__(self, p: dict, s: dict):
            super().__init__()
            self.stem = conv_bn(p["stem"], p["stem_bn"], s["stem_bn"], 1)
            blocks, previous = [], p["stem"]["kernel"].shape[-1]
            for i in range(len(p["blocks"])):
                channels = p["blocks"][i]["conv1"]["kernel"].shape[-1]
                stride = 2 if channels != previous else 1
                blocks.append(Block(p["blocks"][i], s["blocks"][i], stride))
                previous = channels
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(*p["head"]["kernel"].shape)
            copy_linear(torch, self.head, p["head"])

        def forward(self, x):
            h = self.blocks(torch.relu(self.stem(x)))
            return self.head(h.mean(dim=(2, 3)))

    return ResNet


def images(torch, x: np.ndarray, shape: Sequence[int] | None) -> Any:
    """The engine's rows as the net's input: ``(N, D)`` for ``shape`` None, ``(N, 1, L)`` for
    ``(L,)``, NCHW for ``(H, W, C)``."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if shape is None:
        return t
    if len(shape) == 1:
        return t[:, None, :]
    h, w, c = shape
    return t.reshape(-1, h, w, c).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------ losses


def per_config_loss(torch, name: str, logits, labels):
    """The mean over the batch of ``ce`` or ``mse`` (``‖softmax(o) - y‖²``), per leading config axis:
    ``logits (..., B, C)``, ``labels (B,)`` -> ``(...)``."""
    logp = torch.log_softmax(logits, -1)
    if name == "ce":
        picked = logp.gather(-1, labels.expand(*logits.shape[:-1])[..., None])[..., 0]
        return -picked.mean(-1)
    onehot = torch.nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return ((logp.exp() - onehot) ** 2).sum(-1).mean(-1)


# ------------------------------------------------------------------ contenders


def timings(start: float, eval_s: float, accuracies: list[float]) -> dict:
    """A contender's result: wall (= run) seconds since ``start``, its evaluation seconds and
    accuracies (no compile)."""
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "compile_s": 0.0,
        "run_s": wall,
        "eval_s": eval_s,
        "accuracy": accuracies,
    }


def _accuracy(logits, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits.numpy(), -1) == labels))


EVAL_CHUNK = 1000  # examples per forward pass when evaluating (a vmapped ensemble's activations)


def _forward(forward: Callable[[Any], Any], x, torch) -> Any:
    """``forward`` over ``x`` in chunks of :data:`EVAL_CHUNK` examples, concatenated on the
    examples' axis (the last but one: ``(N, C)``, or ``(G, N, C)`` for an ensemble)."""
    parts = [forward(x[i : i + EVAL_CHUNK]) for i in range(0, x.shape[0], EVAL_CHUNK)]
    return torch.cat(parts, dim=-2)


def train_loop(
    torch,
    make_net: Callable[[], Any],
    configs: Sequence[tuple[str, float]],
    optimizer: str,
    x,
    y,
    x_test,
    y_test: np.ndarray,
    batches: np.ndarray,
) -> dict:
    """Per config ``(loss, learning rate)``: a fresh net from ``make_net``, ``torch.optim.SGD`` or
    ``Adam``, the ``batches (steps, B)`` in order; at the end, in eval mode, the test accuracy, and
    the logits of the training split (the work the sweep's evaluation does too)."""
    idx_all = torch.from_numpy(batches.astype(np.int64))
    accuracies, eval_s = [], 0.0
    start = time.perf_counter()
    for loss_name, lr in configs:
        net = make_net().train()
        if optimizer == "sgd":
            opt = torch.optim.SGD(net.parameters(), lr=lr)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(ADAM["b1"], ADAM["b2"]))
        for idx in idx_all:
            loss = per_config_loss(torch, loss_name, net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        t0 = time.perf_counter()
        with torch.no_grad():
            net.eval()
            accuracies.append(_accuracy(_forward(net, x_test, torch), y_test))
            _forward(net, x, torch)
        eval_s += time.perf_counter() - t0
    return timings(start, eval_s, accuracies)


def train_func(
    torch,
    make_net: Callable[[], Any],
    configs: Sequence[tuple[str, float]],
    optimizer: str,
    x,
    y,
    x_test,
    y_test: np.ndarray,
    batches: np.ndarray,
) -> dict:
    """All configs at once, PyTorch's ensembling recipe (see the module docstring): the same
    contract as :func:`train_loop`."""
    func = torch.func
    nets = [make_net().train() for _ in configs]
    params, buffers = func.stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")
    names, tensors = list(params), list(params.values())

    def forward(p, b, xb):
        return func.functional_call(base, (p, b), (xb,))

    batched = torch.vmap(forward, in_dims=(0, 0, None))
    g = len(configs)
    lrs = torch.tensor([lr for _, lr in configs], dtype=torch.float32)
    rate = [lrs.view(g, *([1] * (t.ndim - 1))) for t in tensors]
    loss_names = sorted({name for name, _ in configs})
    masks = {n: torch.tensor([c == n for c, _ in configs]) for n in loss_names}
    m = [torch.zeros_like(t) for t in tensors]
    v = [torch.zeros_like(t) for t in tensors]
    idx_all = torch.from_numpy(batches.astype(np.int64))
    start = time.perf_counter()
    for t, idx in enumerate(idx_all, start=1):
        logits = batched(dict(zip(names, tensors, strict=True)), buffers, x[idx])
        yb = y[idx]
        loss = sum(
            torch.where(masks[n], per_config_loss(torch, n, logits, yb), 0.0).sum()
            for n in loss_names
        )  # configs are independent: the sum keeps each config's gradient
        grads = torch.autograd.grad(loss, tensors)
        with torch.no_grad():
            if optimizer == "sgd":
                for w, gr, r in zip(tensors, grads, rate, strict=True):
                    w.sub_(r * gr)
                continue
            c1, c2 = 1 - ADAM["b1"] ** t, 1 - ADAM["b2"] ** t
            for w, gr, r, mi, vi in zip(tensors, grads, rate, m, v, strict=True):
                mi.mul_(ADAM["b1"]).add_(gr, alpha=1 - ADAM["b1"])
                vi.mul_(ADAM["b2"]).addcmul_(gr, gr, value=1 - ADAM["b2"])
                w.sub_(r * (mi / c1) / ((vi / c2).sqrt() + ADAM["eps"]))
    t0 = time.perf_counter()
    base.eval()
    trained = dict(zip(names, tensors, strict=True))
    with torch.no_grad():
        ensemble = lambda xb: torch.vmap(forward, in_dims=(0, 0, None))(trained, buffers, xb)
        logits = _forward(ensemble, x_test, torch)
        _forward(ensemble, x, torch)  # the training split, as the sweep's evaluation does
    accuracies = [_accuracy(logits[i], y_test) for i in range(g)]
    eval_s = time.perf_counter() - t0
    return timings(start, eval_s, accuracies)
