"""The inner loop of an MLP written as batched matrix products: every task at once (Chapter 3).

For a fully connected network the inner gradient needs no automatic differentiation: the
backward pass of ``z = h W^T + b`` is two matrix products, and an activation's derivative is
an elementwise factor. Written for a whole meta-batch (weights ``[tasks, out, in]`` once they
are adapted), one inner step is about twenty tensor operations however many tasks there are,
and autograd differentiates through them for the second-order meta-gradient. On a CPU that
removes most of the per-operation overhead that ``vmap`` over ``torch.func.grad`` pays for a
model this small (``benchmarks/maml_speed.py`` measures it; ``tests/test_gradients.py``
checks every meta-gradient against an unrolled float64 reference).

The meta-gradient can be written out the same way (:func:`batched_meta_gradient`): reverse
mode through the inner steps needs the support loss's Hessian times a vector at each step,
and that product is the directional derivative of the gradient pass above, one more set of
matrix products. No autograd graph is built, which at this size is most of the cost.

Only plain MLPs qualify (:func:`closed_form_layers` says which): ``Linear`` layers with one
ReLU or tanh between them, as :class:`mlbook.models.MLP` builds them.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .utils import check_choice

__all__ = ["closed_form_layers", "batched_forward", "batched_inner_loop", "batched_task_losses",
           "batched_meta_gradient"]

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
    if weight.dim() == 2:
        return F.linear(h, weight, bias) if bias.dim() == 1 else F.linear(h, weight) + bias.unsqueeze(-2)
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


def _output_gradient(loss: str, output: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    # d(scale x per-task mean loss) / d output, for every task at once.
    if loss == "mse":
        return (output - y) * (2.0 * scale / output[0].numel())
    probabilities = torch.softmax(output, dim=-1)
    return (probabilities - F.one_hot(y, output.shape[-1]).to(output.dtype)) * (scale / output.shape[-2])


def _through_activation(activation: str, delta: torch.Tensor, layer_output: torch.Tensor) -> torch.Tensor:
    # Backpropagate delta through the activation that produced layer_output. ReLU: the native
    # ReLU backward (one kernel; its second derivative is zero almost everywhere, which is
    # exact). tanh: tanh'(z) = 1 - tanh(z)^2, which autograd differentiates again for second order.
    if activation == "relu":
        return torch.ops.aten.threshold_backward(delta, layer_output, 0)
    return delta * (1 - layer_output * layer_output)


def _gradients(layers, activation, params, x, y, loss, adapted, trace=None, scale: float = 1.0) -> Params:
    """Per-task gradients ``[tasks, *shape]`` of ``scale`` x the mean loss for the parameters in ``adapted``.

    With a ``trace`` dict, what a Hessian-vector product at these parameters needs is kept in
    it: the output, every layer's input, output gradient ``delta`` and ``delta @ W``.
    """
    output, inputs = batched_forward(layers, activation, params, x)
    delta = _output_gradient(loss, output, y, scale)
    lowest = min(i for i, name in enumerate(layers)
                 if f"{name}.weight" in adapted or f"{name}.bias" in adapted)
    grads, deltas, pulled = {}, {}, {}
    for i in range(len(layers) - 1, lowest - 1, -1):
        name = layers[i]
        deltas[i] = delta
        if f"{name}.weight" in adapted:
            grads[f"{name}.weight"] = torch.matmul(delta.transpose(-1, -2), inputs[i])
        if f"{name}.bias" in adapted:
            grads[f"{name}.bias"] = delta.sum(-2)
        if i > lowest:
            pulled[i] = torch.matmul(delta, params[f"{name}.weight"])
            delta = _through_activation(activation, pulled[i], inputs[i])
    if trace is not None:
        trace.update(output=output, inputs=inputs, deltas=deltas, pulled=pulled)
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
    return output, _task_losses(output, y, loss)


def _task_losses(output: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "mse":
        return (output - y).pow(2).flatten(1).mean(1)
    per_point = F.cross_entropy(output.flatten(0, 1), y.flatten(), reduction="none")
    return per_point.view(y.shape).mean(1)


def _add(a, b):
    # Sum of two contributions, either of which may be absent (an exact zero never computed).
    return b if a is None else a if b is None else a + b


def _hessian_vector(layers, activation, params, trace, loss, tangent: Params) -> Params:
    """Per-task Hessian of the support loss times ``tangent``, for every parameter.

    The directional derivative of :func:`_gradients` (forward mode written out, Pearlmutter's
    R-operator): each operation of the forward and backward pass contributes its derivative
    in the direction ``tangent`` (``[tasks, *shape]`` per adapted parameter; absent ones are
    zero). ``trace`` is what :func:`_gradients` kept at the same parameters.
    """
    inputs, deltas, pulled = trace["inputs"], trace["deltas"], trace["pulled"]
    last = len(layers) - 1

    def through(i, change):  # a change at layer i's input, through the activation's derivative
        return _through_activation(activation, change, inputs[i])

    # Forward: the change of every layer's input and of the output.
    d_inputs = [None] * len(layers)
    d_z = None
    for i, name in enumerate(layers):
        d_weight, d_bias = tangent.get(f"{name}.weight"), tangent.get(f"{name}.bias")
        d_z = None
        if d_inputs[i] is not None:
            d_z = torch.matmul(d_inputs[i], params[f"{name}.weight"].transpose(-1, -2))
        if d_weight is not None:
            d_z = _add(d_z, torch.matmul(inputs[i], d_weight.transpose(-1, -2)))
        if d_bias is not None:
            d_z = _add(d_z, d_bias.unsqueeze(-2))
        if i < last and d_z is not None:
            d_inputs[i + 1] = through(i + 1, d_z)
    # The change of the output gradient.
    d_delta = None
    if d_z is not None:
        if loss == "mse":
            d_delta = d_z * (2.0 / d_z[0].numel())
        else:
            p = torch.softmax(trace["output"], dim=-1)
            d_delta = p * (d_z - (p * d_z).sum(-1, keepdim=True)) / d_z.shape[-2]
    # Backward: the change of every gradient.
    result = {}
    for i in range(last, -1, -1):
        name = layers[i]
        delta = deltas.get(i)  # kept for the adapted layers and those below them that need it
        d_weight = tangent.get(f"{name}.weight")
        d_grad = None if d_delta is None else torch.matmul(d_delta.transpose(-1, -2), inputs[i])
        if d_inputs[i] is not None:
            d_grad = _add(d_grad, torch.matmul(delta.transpose(-1, -2), d_inputs[i]))
        result[f"{name}.weight"] = d_grad
        result[f"{name}.bias"] = None if d_delta is None else d_delta.sum(-2)
        if i == 0:
            break
        d_pulled = None if d_delta is None else torch.matmul(d_delta, params[f"{name}.weight"])
        if d_weight is not None:
            d_pulled = _add(d_pulled, torch.matmul(delta, d_weight))
        d_delta = None if d_pulled is None else through(i, d_pulled)
        if activation == "tanh" and d_inputs[i] is not None:
            # tanh'(z) = 1 - h^2 changes too: by -2 h dh.
            d_delta = _add(d_delta, -2 * inputs[i] * d_inputs[i] * pulled[i])
    return result


def batched_meta_gradient(layers: list[str], activation: str, params: Mapping[str, torch.Tensor],
                          support_x, support_y, query_x, query_y, steps: int, lr,
                          loss: str = "mse", first_order: bool = False, adapt_keys=None,
                          compiled: bool = False):
    """MAML's meta-gradient of a meta-batch, by hand: no autograd graph at all (Chapter 3).

    Adapts every task with :func:`batched_inner_loop`'s maths (``lr`` as there: a number, one
    rate per step, or Meta-SGD's dict of per-parameter rates), scores the query sets, then runs
    reverse mode through the inner steps explicitly: the query gradient ``u`` becomes
    ``u - H (lr * u)`` at each step back, ``H`` being the support loss's Hessian at that
    step's parameters (:func:`_hessian_vector`); first order keeps ``u``. Rates that require
    grad get theirs, ``-u * g`` summed over the steps that use them (``g``: the inner gradient).
    Returns (gradient of the mean query loss for every parameter of ``params``, for the rates
    (None unless they require grad), the outputs ``[tasks, points, out]``, each task's loss
    ``[tasks]``).

    ``compiled`` runs the same function through ``torch.compile`` (Inductor fuses its small
    operations into a few kernels): the first call of each shape compiles for seconds, every
    later one runs about twice as fast on a CPU. Where compiling fails (no C++ compiler), it
    warns once and runs as written.
    """
    check_choice("loss", loss, ("mse", "cross_entropy"))
    keys = tuple(params) if adapt_keys is None else tuple(adapt_keys)
    per_parameter = isinstance(lr, Mapping)
    if per_parameter:
        learn_rates = any(r.requires_grad for r in lr.values())
    else:
        learn_rates = isinstance(lr, torch.Tensor) and lr.requires_grad
        if isinstance(lr, torch.Tensor):
            lr = lr.detach().tolist() if lr.dim() == 1 else [float(lr.detach())] * steps
        else:
            lr = [float(lr)] * steps if isinstance(lr, (int, float)) else [float(r) for r in lr]
    arguments = (layers, activation, dict(params), support_x, support_y, query_x, query_y, steps,
                 lr, loss, first_order, keys, per_parameter, learn_rates)
    if compiled and not _COMPILE_FAILED:
        try:
            return _compiled_meta_gradient()(*arguments)
        except Exception as error:
            # Bad input fails again here, with its own error and compiling left on; only a
            # failure of the compiler itself switches to the uncompiled code for good.
            result = _meta_gradient(*arguments)
            _compile_failed(error)
            return result
    return _meta_gradient(*arguments)


_COMPILED = None
_COMPILE_FAILED = False


def _compiled_meta_gradient():
    global _COMPILED
    if _COMPILED is None:
        # One graph per shape and setting (fullgraph: nothing falls back piecemeal); rates are
        # plain numbers, so each set of rates is a specialisation of its own.
        _COMPILED = torch.compile(_meta_gradient, fullgraph=True, dynamic=False)
    return _COMPILED


def _compile_failed(error: Exception) -> None:
    global _COMPILE_FAILED
    _COMPILE_FAILED = True
    warnings.warn(f"torch.compile could not build the meta-gradient ({type(error).__name__}: "
                  f"{str(error).splitlines()[0] if str(error) else ''}); running it uncompiled",
                  RuntimeWarning, stacklevel=3)


def _meta_gradient(layers, activation, params, support_x, support_y, query_x, query_y, steps, lr,
                   loss, first_order, keys, per_parameter, learn_rates):
    def rate(step, name):
        return lr[name].detach() if per_parameter else lr[step]

    with torch.no_grad():
        theta, traces, inner_grads = dict(params), [], []
        adapted = set(keys)
        for step in range(steps):
            trace = {}
            grads = _gradients(layers, activation, theta, support_x, support_y, loss, adapted, trace)
            traces.append((dict(theta), trace) if not first_order else None)
            inner_grads.append(grads if learn_rates else None)
            for name, g in grads.items():
                r = rate(step, name)
                theta[name] = torch.add(theta[name], g, alpha=-r) if isinstance(r, float) else theta[name] - r * g
        # u carries the 1/tasks of the mean over tasks from the start: every step below is
        # linear in u, so the final gradient is a plain sum over tasks.
        tasks = query_x.shape[0]
        query_trace = {}
        u = _gradients(layers, activation, theta, query_x, query_y, loss, set(params), query_trace,
                       scale=1.0 / tasks)
        output = query_trace["output"]
        losses = _task_losses(output, query_y, loss)
        rate_grad = None
        if learn_rates:
            rate_grad = ({name: torch.zeros_like(r) for name, r in lr.items()} if per_parameter
                         else torch.zeros(steps, dtype=output.dtype, device=output.device))
        for step in range(steps - 1, -1, -1):
            if learn_rates:  # theta_{step+1} = theta_step - rate * g: d rate = -u * g
                for name, g in inner_grads[step].items():
                    if per_parameter:
                        rate_grad[name] -= (u[name] * g).sum(0)
                    else:
                        rate_grad[step] -= (u[name] * g).sum()
            if first_order:
                continue
            at, trace = traces[step]
            if per_parameter:
                hu = _hessian_vector(layers, activation, at, trace, loss, {k: rate(step, k) * u[k] for k in keys})
                scale = -1.0
            else:
                hu = _hessian_vector(layers, activation, at, trace, loss, {k: u[k] for k in keys})
                scale = -rate(step, None)
            for name, change in hu.items():
                if change is not None:
                    u[name] = torch.add(u[name], change, alpha=scale)
        return {name: g.sum(0) for name, g in u.items()}, rate_grad, output, losses
