"""The inner loop of an MLP written as batched matrix products: every task at once (Chapter 3).

For a fully connected network the inner gradient needs no automatic differentiation: the
backward pass of ``z = h W^T + b`` is two matrix products, and an activation's derivative is
an elementwise factor. Written for a whole meta-batch (weights ``[tasks, out, in]`` once they
are adapted), one inner step is about twenty tensor operations however many tasks there are,
and autograd differentiates through them for the second-order meta-gradient. On a CPU that
removes most of the per-operation overhead that ``vmap`` over ``torch.func.grad`` pays for a
model this small (``benchmarks/maml_speed.py`` measures it; ``tests/test_gradients.py``
checks every meta-gradient against an unrolled float64 reference).

Only plain MLPs qualify (:func:`closed_form_layers` says which): ``Linear`` layers with one
ReLU or tanh between them, as :class:`mlbook.models.MLP` builds them.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .utils import check_choice

__all__ = ["closed_form_layers", "batched_forward", "batched_inner_loop", "batched_task_losses"]

Params = dict[str, torch.Tensor]
_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh"}


def closed_form_layers(model: nn.Module) -> tuple[list[str], str] | None:
    """``(layer names, activation)`` when ``model`` is a plain MLP the closed form can run, else None (Chapter 3).

    A plain MLP is ``features`` (Linear, activation, Linear, activation, ...) then a ``head``
    Linear, with one activation type throughout: what :class:`mlbook.models.MLP` builds.
    """
    features = getattr(model, "features", None)
    head = getattr(model, "head", None)
    if not isinstance(features, nn.Sequential) or not isinstance(head, nn.Linear):
        return None
    if set(dict(model.named_modules())) - {"", "features", "head"} - {f"features.{i}" for i in range(len(features))}:
        return None
    layers, kinds = [], set()
    modules = list(features)
    if len(modules) % 2:
        return None
    for i in range(0, len(modules), 2):
        linear, act = modules[i], modules[i + 1]
        if not isinstance(linear, nn.Linear) or type(act) not in _ACTIVATIONS:
            return None
        layers.append(f"features.{i}")
        kinds.add(_ACTIVATIONS[type(act)])
    if len(kinds) > 1:
        return None
    layers.append("head")
    return layers, (kinds.pop() if kinds else "relu")


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # weight is [out, in] (shared by all tasks) or [tasks, out, in] (adapted per task); one
    # fused kernel either way, since each operation's fixed cost dominates at these sizes.
    if weight.dim() == 2 and bias.dim() == 1:
        return F.linear(h, weight, bias)
    if bias.dim() == 1:
        bias = bias.expand(weight.shape[0], -1)
    return torch.baddbmm(bias.unsqueeze(-2), h, weight.transpose(-1, -2))


def batched_forward(layers: list[str], activation: str, params: Mapping[str, torch.Tensor],
                    x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The MLP's output for ``x`` ``[tasks, points, in]``, and every layer's input (Chapter 3).

    The layer inputs are what the backward pass of :func:`batched_inner_loop` needs.
    """
    inputs = []
    h = x
    for i, name in enumerate(layers):
        inputs.append(h)
        z = _linear(h, params[f"{name}.weight"], params[f"{name}.bias"])
        h = z if i == len(layers) - 1 else (torch.relu(z) if activation == "relu" else torch.tanh(z))
    return h, inputs


def _output_gradient(loss: str, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # d(per-task mean loss) / d output, for every task at once.
    if loss == "mse":
        return (output - y) * (2.0 / output[0].numel())
    probabilities = torch.softmax(output, dim=-1)
    return (probabilities - F.one_hot(y, output.shape[-1]).to(output.dtype)) / output.shape[-2]


def _through_activation(activation: str, delta: torch.Tensor, layer_output: torch.Tensor) -> torch.Tensor:
    # Backpropagate delta through the activation that produced layer_output. ReLU: the native
    # ReLU backward (one kernel; its second derivative is zero almost everywhere, which is
    # exact). tanh: tanh'(z) = 1 - tanh(z)^2, which autograd differentiates again for second order.
    if activation == "relu":
        return torch.ops.aten.threshold_backward(delta, layer_output, 0)
    return delta * (1 - layer_output * layer_output)


def _gradients(layers, activation, params, x, y, loss, adapted) -> Params:
    """Per-task gradients ``[tasks, *shape]`` of the mean loss for the parameters in ``adapted``."""
    output, inputs = batched_forward(layers, activation, params, x)
    delta = _output_gradient(loss, output, y)
    lowest = min(i for i, name in enumerate(layers)
                 if f"{name}.weight" in adapted or f"{name}.bias" in adapted)
    grads = {}
    for i in range(len(layers) - 1, lowest - 1, -1):
        name = layers[i]
        if f"{name}.weight" in adapted:
            grads[f"{name}.weight"] = torch.matmul(delta.transpose(-1, -2), inputs[i])
        if f"{name}.bias" in adapted:
            grads[f"{name}.bias"] = delta.sum(-2)
        if i > lowest:
            weight = params[f"{name}.weight"]
            delta = _through_activation(activation, torch.matmul(delta, weight), inputs[i])
    return grads


def batched_inner_loop(layers: list[str], activation: str, params: Mapping[str, torch.Tensor],
                       x: torch.Tensor, y: torch.Tensor, steps: int, lr, loss: str = "mse",
                       first_order: bool = False, adapt_keys=None) -> Params:
    """Adapt(phi, D_i^train) for every task of a meta-batch at once (Chapter 3).

    The same maths as :func:`mlbook.bilevel.inner_loop` mapped over tasks: ``steps`` gradient
    steps on each task's mean ``loss`` ('mse' or 'cross_entropy') from the shared ``params``;
    ``x`` is ``[tasks, points, in]``. ``lr`` is a number, one rate per step (a list or 1-D tensor) or a
    dict of per-parameter rates (Meta-SGD). The adapted parameters gain a leading task axis.
    """
    check_choice("loss", loss, ("mse", "cross_entropy"))
    keys = list(params) if adapt_keys is None else list(adapt_keys)
    params = dict(params)
    for step in range(steps):
        # First order treats the inner gradients as constants: computing them without recording
        # a graph gives the same values and saves autograd its bookkeeping.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not first_order):
            grads = _gradients(layers, activation, params, x, y, loss, set(keys))
        for name, g in grads.items():
            if isinstance(lr, Mapping):
                rate = lr[name]
            elif isinstance(lr, (list, tuple)) or (isinstance(lr, torch.Tensor) and lr.dim() == 1):
                rate = lr[step]
            else:
                rate = lr
            if isinstance(rate, (int, float)):  # one fused kernel instead of a product and a difference
                params[name] = torch.add(params[name], g, alpha=-rate)
            else:
                params[name] = params[name] - rate * g
    return params


def batched_task_losses(layers: list[str], activation: str, params: Mapping[str, torch.Tensor],
                        x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs ``[tasks, points, out]``, each task's mean loss ``[tasks]``) of adapted ``params`` (Chapter 3)."""
    output, _ = batched_forward(layers, activation, params, x)
    if loss == "mse":
        return output, (output - y).pow(2).flatten(1).mean(1)
    per_point = F.cross_entropy(output.flatten(0, 1), y.flatten(), reduction="none")
    return output, per_point.view(y.shape).mean(1)
