"""The differentiable inner loop of bi-level optimisation (Chapter 3).

    phi* = argmin_phi  sum_i  L_outer( theta_i*(phi); D_i^test )
    theta_i*(phi) = Adapt(phi, D_i^train)   (here: a few gradient steps on L_inner)

Parameters are dicts of tensors. ``torch.func.grad`` computes the inner gradient; outer
autograd differentiates through it (second order) unless ``first_order`` detaches it.

Three ways to get the meta-gradient d L_outer / d phi live here:

* second order: differentiate through the unrolled inner loop (memory grows with the steps);
* first order: treat the inner gradients as constants (FOMAML);
* implicit: solve a proximal inner problem, then ``(I + H / lam) v = grad L_outer`` with
  conjugate gradient and Hessian-vector products (iMAML; memory independent of the steps).

Reptile and iMAML produce a meta-gradient *direction* rather than a differentiable loss;
:func:`with_gradient` wraps such a direction in a surrogate scalar so the one trainer, which
calls ``loss.backward()``, serves them too.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch.func import grad

from .maxpool import backward_differentiated

# The mapping over tasks lives in taskmap; these names are re-exported for the chapters.
from .taskmap import STRATEGIES, call, choose_strategy, map_tasks, run_tasks
from .utils import check_positive, check_positive_int

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["sgd_step", "inner_loop", "constant_gradient", "task_loss_fn", "map_tasks", "check_params", "check_lrs",
           "hvp", "conjugate_gradient", "proximal_inner_loop", "implicit_meta_grad",
           "with_gradient", "tree_dot", "choose_strategy", "STRATEGIES", "call", "run_tasks"]


def check_params(module: torch.nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Raise a clear error when ``params`` does not fit ``module``'s parameters (Chapter 3)."""
    expected = dict(module.named_parameters())
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    if missing or unexpected:
        raise ValueError(f"params does not fit the model: missing {missing}, unexpected {unexpected}")
    for name, tensor in expected.items():
        if tuple(params[name].shape) != tuple(tensor.shape):
            raise ValueError(f"params[{name!r}] has shape {tuple(params[name].shape)}, "
                             f"the model expects {tuple(tensor.shape)}")


def sgd_step(params: Params, grads: Params, lr) -> Params:
    """One functional gradient step: theta <- theta - lr * g (Chapter 1).

    ``lr`` is a number, a scalar tensor, or a dict of per-parameter tensors (Meta-SGD).
    Parameters missing from ``grads`` are kept as they are (ANIL adapts only the head).
    """
    out = dict(params)
    for name, g in grads.items():
        step = lr[name] if isinstance(lr, Mapping) else lr
        out[name] = params[name] - step * g
    return out


def task_loss_fn(module: torch.nn.Module, loss: Callable) -> LossFn:
    """``(params, x, y) -> loss(functional_call(module, params, x), y)`` for one task (Chapter 3)."""

    def inner_loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss(call(module, params, x), y)

    return inner_loss


def check_lrs(name: str, lr, steps: int) -> torch.Tensor | float | Mapping:
    """Validate inner learning rates: a positive number, or ``steps`` positive values (Chapter 3).

    Returns a number, or a 1-D tensor with one rate per inner step. Dicts (per-parameter rates,
    Meta-SGD) pass through unchanged.
    """
    if isinstance(lr, Mapping):
        return lr
    if isinstance(lr, torch.Tensor) and lr.dim() == 0:
        lr = lr.reshape(1).expand(steps) if lr.requires_grad else float(lr)
    if isinstance(lr, (list, tuple)):
        values = [check_positive(name, v) for v in lr]
        if len(values) != steps:
            raise ValueError(f"{name} must have one rate per inner step ({steps}), got {len(values)}")
        return torch.tensor(values, dtype=torch.float64)
    if isinstance(lr, torch.Tensor):
        if lr.dim() != 1 or lr.shape[0] != steps:
            raise ValueError(f"{name} must be a number or have one rate per inner step "
                             f"({steps}), got shape {tuple(lr.shape)}")
        return lr
    return check_positive(name, lr)


def inner_loop(loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int,
               lr, first_order: bool = False, adapt_keys: Iterable[str] | None = None) -> Params:
    """Adapt(phi, D_train): ``steps`` gradient steps on ``loss_fn`` from ``params`` (Chapter 3).

    ``lr`` is a number, a tensor with one entry per step, or a dict of per-parameter tensors.
    With ``first_order`` the inner gradients are detached, so the meta-gradient ignores
    second derivatives (FOMAML). ``adapt_keys`` restricts adaptation to some parameters (ANIL).
    """
    steps = check_positive_int("steps", steps)
    if x.shape[0] == 0:
        raise ValueError("the support set has no examples: Adapt needs at least one")
    lr = check_lrs("lr", lr, steps)
    keys = list(params) if adapt_keys is None else list(adapt_keys)
    unknown = [k for k in keys if k not in params]
    if unknown or not keys:
        raise ValueError(f"adapt_keys must name parameters of the model, got {keys}")
    for step in range(steps):
        # First order, the inner gradient is a constant to the outer level: computed from
        # detached parameters, the outer graph does not record its forward and backward passes.
        current = {k: v.detach() for k, v in params.items()} if first_order else params
        fast = {k: current[k] for k in keys}
        frozen = {k: v for k, v in current.items() if k not in fast}
        task_loss = lambda f: loss_fn({**frozen, **f}, x, y)  # noqa: E731
        grads = constant_gradient(task_loss, fast) if first_order else differentiable_gradient(task_loss, fast)
        step_lr = lr[step] if isinstance(lr, torch.Tensor) and lr.dim() == 1 else lr
        params = sgd_step(params, grads, step_lr)
    return params


def constant_gradient(fn: Callable[[Params], torch.Tensor], params: Params) -> Params:
    """The gradient of ``fn`` at ``params``, as a constant: no graph for a second derivative (Chapter 3).

    What first-order inner steps (FOMAML, iMAML's inner problem) need. ``torch.func.grad``
    always records a differentiable backward, and for group and batch norm that backward is a
    chain of small ops instead of one kernel (a first-order Conv4 inner step took 1.7x as
    long); outside any torch.func transform plain autograd gives the same numbers without it.
    Parameters ``fn`` does not use get zeros, as with ``torch.func.grad``.
    """
    detached = {k: v.detach() for k, v in params.items()}
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return {k: v.detach() for k, v in grad(fn)(detached).items()}
    with torch.enable_grad():
        leaves = {k: v.requires_grad_() for k, v in detached.items()}
        value = fn(leaves)
        if not value.requires_grad:
            return {k: torch.zeros_like(v) for k, v in detached.items()}
        found = torch.autograd.grad(value, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(leaves, found))


def differentiable_gradient(fn: Callable[[Params], torch.Tensor], params: Params) -> Params:
    """The gradient of ``fn`` at ``params``, itself differentiable: MAML's inner step (Chapter 3).

    Inside a torch.func transform (tasks under vmap, or an outer ``torch.func.grad``) this is
    ``torch.func.grad``. Outside one, where tasks run one by one or side by side on CPU threads,
    plain autograd with ``create_graph=True`` gives the same derivatives with less Python work
    per step. Parameters ``fn`` does not use get zeros, as with ``torch.func.grad``.
    """
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return grad(fn)(params)
    if not torch.is_grad_enabled() or not any(v.requires_grad for v in params.values()):
        # Nothing outside will differentiate the step: the gradient is a constant.
        return constant_gradient(fn, params)
    # A parameter the outer level does not differentiate still needs a gradient here: it
    # becomes a leaf of its own, and the gradient keeps its dependence on the others.
    leaves = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
    with backward_differentiated():
        value = fn(leaves)
    if not value.requires_grad:
        return {k: torch.zeros_like(v) for k, v in params.items()}
    found = torch.autograd.grad(value, list(leaves.values()), create_graph=True, allow_unused=True,
                                materialize_grads=True)
    return dict(zip(leaves, found))


# -- implicit meta-gradients (iMAML) ---------------------------------------------------------
def tree_dot(a: Params, b: Params) -> torch.Tensor:
    """Sum over names of <a[name], b[name]>: the inner product of two parameter dicts (Chapter 3)."""
    return sum((a[k] * b[k]).sum() for k in a)


def hvp(loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor, vector: Params) -> Params:
    """Hessian-vector product H v of ``loss_fn`` at ``params``, without forming H (Chapter 3).

    Reverse over reverse: the gradient of <grad L(params), v> with respect to params costs
    about two backward passes, so CG never needs the (parameters x parameters) Hessian.
    """
    return grad(lambda p: tree_dot(grad(loss_fn)(p, x, y), vector))(params)


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int = 5) -> Params:
    """Approximately solve ``A v = b`` for a symmetric positive definite ``A`` given as ``matvec`` (Chapter 3).

    A fixed number of iterations (no data-dependent stopping), so it runs unchanged under
    ``vmap``; with ``steps`` equal to the number of unknowns it is exact in exact arithmetic.
    """
    steps = check_positive_int("steps", steps)
    solution = {k: torch.zeros_like(v) for k, v in b.items()}
    residual = dict(b)
    direction = dict(b)
    rs = tree_dot(residual, residual)
    for _ in range(steps):
        a_dir = matvec(direction)
        alpha = _safe_ratio(rs, tree_dot(direction, a_dir))
        solution = {k: solution[k] + alpha * direction[k] for k in b}
        residual = {k: residual[k] - alpha * a_dir[k] for k in b}
        rs_new = tree_dot(residual, residual)
        beta = _safe_ratio(rs_new, rs)
        direction = {k: residual[k] + beta * direction[k] for k in b}
        rs = rs_new
    return solution


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # Once the residual is exactly zero, 0/0 would turn the iterate into NaN: stop moving instead.
    # (A branch would not run under vmap, hence torch.where.)
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def proximal_inner_loop(loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor,
                        steps: int, lr, lam: float) -> Params:
    """iMAML's inner problem: ``steps`` gradient steps on L_inner(theta) + lam/2 ||theta - phi||^2 (Chapter 3).

    Starts at phi = ``params``, which are detached: the implicit meta-gradient never
    differentiates through these steps, so their number does not change the memory.
    """
    steps = check_positive_int("steps", steps)
    lam = check_positive("lam", lam)
    if x.shape[0] == 0:
        raise ValueError("the support set has no examples: Adapt needs at least one")
    lr = check_lrs("lr", lr, steps)
    anchor = {k: v.detach() for k, v in params.items()}

    def regularised(theta):
        return loss_fn(theta, x, y) + 0.5 * lam * sum(((theta[k] - anchor[k]) ** 2).sum() for k in theta)

    theta = dict(anchor)
    for step in range(steps):
        step_lr = lr[step] if isinstance(lr, torch.Tensor) and lr.dim() == 1 else lr
        theta = sgd_step(theta, constant_gradient(regularised, theta), step_lr)
    return theta


def implicit_meta_grad(loss_fn: LossFn, theta: Params, x: torch.Tensor, y: torch.Tensor,
                       outer_grad: Params, lam: float, cg_steps: int = 5) -> Params:
    """The implicit meta-gradient (I + H / lam)^{-1} grad L_outer(theta) of iMAML (Chapter 3).

    ``H`` is the Hessian of L_inner at the adapted ``theta``; the linear system is solved by
    :func:`conjugate_gradient` with :func:`hvp`, so memory does not grow with the inner steps.
    """
    lam = check_positive("lam", lam)
    theta = {k: v.detach() for k, v in theta.items()}

    def matvec(v: Params) -> Params:
        hv = hvp(loss_fn, theta, x, y, v)
        return {k: v[k] + hv[k] / lam for k in v}

    return conjugate_gradient(matvec, outer_grad, cg_steps)


def with_gradient(value: torch.Tensor, params: Params, direction: Params) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient with respect to ``params`` is ``direction`` (Chapter 3).

    ``value + sum <p - stop_grad(p), stop_grad(d)>``: the added term is zero, its gradient is
    ``d``. Reptile and iMAML compute their meta-gradient directly and hand it to the one trainer
    this way; the reported loss stays the honest query loss. ``value`` may also hold one entry
    per task (``[B]``) with directions ``[B, *p.shape]``: entry i then carries task i's direction.
    """
    total = value.detach()
    for name, d in direction.items():
        p = params[name]
        total = total + ((p - p.detach()) * d.detach()).reshape(*value.shape, -1).sum(-1)
    return total
