"""Model-Agnostic Meta-Learning (Finn et al., 2017), second order by default (Chapter 3).

    theta_i  = phi - alpha * grad_phi L_inner(phi; D_i^train)        (repeated `steps` times)
    phi     <- phi - beta * grad_phi  sum_i L_outer(theta_i; D_i^test)

The outer gradient flows through the inner step (second order) unless ``first_order=True``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..bilevel import STRATEGIES, call, check_lrs, check_params, inner_loop, task_loss_fn
from ..closedform import batched_inner_loop, batched_meta_gradient, batched_task_losses, closed_form_layers
from ..models import MLP, Conv4, init_params
from ..utils import check_choice, check_positive_int
from .base import Learner, LearnerConfig, task_loss

__all__ = ["MAML", "FOMAML", "model_for", "gradient_options"]


def model_for(config: LearnerConfig) -> nn.Module:
    """The network a gradient-based learner adapts: the sinusoid MLP, or a Conv4 with ``ways`` outputs (Chapter 5)."""
    if config.regression:
        return MLP(activation=config.activation)
    return Conv4(out_features=config.ways, channels=config.channels, norm=config.norm,
                 image_size=config.image_size, pools=config.pools, space_to_depth=config.space_to_depth,
                 residual_blocks=config.residual_blocks, feature_blocks=config.feature_blocks)


def gradient_options(cls, config: LearnerConfig) -> dict:
    """Keyword arguments of a gradient-based learner from the config fields it declares (Chapter 5)."""
    kwargs = {"loss": "mse" if config.regression else "cross_entropy"}
    if "inner_lr" in cls.options:
        kwargs["inner_lr"] = config.inner_lr or (0.01 if config.regression else 0.4)
    if "inner_steps" in cls.options:
        kwargs["steps"] = config.inner_steps
    if "first_order" in cls.options:
        kwargs["first_order"] = config.first_order
    return kwargs


class MAML(Learner):
    """MAML and first-order MAML behind the one learner interface (Chapters 1 and 3).

    ``inner_lr`` is alpha: one number, or a sequence with one rate per inner step. ``steps``
    is the number of inner steps. With ``learn_inner_lr`` the per-step learning rates are part
    of the meta-learned state. ``adapt_keys`` restricts the inner loop to some parameters
    (ANIL adapts only ``head.*``).

    ``strategy`` is one of :data:`mlbook.taskmap.STRATEGIES` or 'closed-form': for a plain MLP
    the inner gradient written as batched matrix products for every task at once
    (:mod:`mlbook.closedform`), which 'auto' picks whenever the model allows it. There
    ``compile=True`` runs the hand-written meta-gradient through ``torch.compile``: seconds
    to compile once per shape (cached on disk), then each meta-step about twice as fast on a
    CPU, worth it for runs of thousands of steps (``benchmarks/maml_speed.py`` measures both).
    """

    name = "MAML"
    kind = "optimisation"
    options = ("inner_lr", "inner_steps", "first_order")
    adapts_with_gradients = True

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, steps: int = 1,
                 first_order: bool = False, learn_inner_lr: bool = False, loss: str = "cross_entropy",
                 adapt_keys=None, strategy: str = "auto", chunk_size: int | None = None,
                 compile: bool = False):
        check_choice("strategy", strategy, STRATEGIES + ("closed-form",))
        super().__init__(loss=loss, strategy=strategy, chunk_size=chunk_size)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        # The closed form replaces adapt-then-score for a whole meta-batch, so it serves only
        # learners whose per-task metrics are exactly that (not Reptile's or iMAML's surrogates).
        plain_metrics = type(self).task_metrics is Learner.task_metrics
        wanted = strategy in ("auto", "closed-form")
        self._closed_form = closed_form_layers(model) if wanted and plain_metrics else None
        if strategy == "closed-form" and self._closed_form is None:
            raise ValueError("strategy='closed-form' needs a plain MLP (Linear layers with ReLU or tanh, as "
                             f"mlbook.models.MLP builds) and a learner that scores adapt-then-predict; "
                             f"{type(self).__name__} with {type(model).__name__} is not; use 'auto', 'vmap', "
                             "'loop' or 'threads'")
        if self._closed_form is not None:
            self.episode_metrics = self._closed_form_metrics
        # The hand-written meta-gradient is the meta-loss's gradient only while the meta-loss is
        # the plain one: a subclass that changes how tasks are scored keeps autograd.
        self._meta_gradient_by_hand = (self._closed_form is not None and type(self).metrics is Learner.metrics
                                       and type(self).meta_loss is Learner.meta_loss)
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        if compile and not self._meta_gradient_by_hand:
            raise ValueError("compile=True compiles the hand-written meta-gradient of a plain MLP (strategy "
                             f"'auto' or 'closed-form'); {type(self).__name__} with {type(model).__name__} and "
                             f"strategy {strategy!r} does not use it: leave compile=False")
        self.compile = compile
        self._closed_form_shapes = tuple((name, p.shape) for name, p in model.named_parameters())
        self.steps = check_positive_int("steps", steps)
        lrs = check_lrs("inner_lr", list(inner_lr) if isinstance(inner_lr, (list, tuple)) else inner_lr,
                        self.steps)
        if isinstance(lrs, torch.Tensor):
            if not bool((lrs > 0).all()):
                raise ValueError(f"inner_lr must be positive numbers, got {lrs.tolist()}")
            self.inner_lr = tuple(float(v) for v in lrs)
        else:
            self.inner_lr = lrs
        self.first_order = bool(first_order)
        self.learn_inner_lr = bool(learn_inner_lr)
        self.adapt_keys = None if adapt_keys is None else list(adapt_keys)
        self.inner_loss = task_loss_fn(model, lambda out, y: task_loss(self.loss, out, y))

    @classmethod
    def from_config(cls, config: LearnerConfig) -> "MAML":
        """Conv4 (images) or the sinusoid MLP, with the book's inner step size (Chapters 3 and 5)."""
        return cls(model_for(config), **gradient_options(cls, config))

    def init(self, seed: int, *, dtype=None, device=None) -> dict:
        """phi: fresh model parameters (and learnable per-step inner learning rates)."""
        params = init_params(self.model, seed, dtype=dtype, device=device)
        any_param = next(iter(params.values()))
        rates = self.inner_lr if isinstance(self.inner_lr, tuple) else (self.inner_lr,) * self.steps
        lr = torch.tensor(rates, dtype=any_param.dtype, device=any_param.device)
        return {"params": params, "inner_lr": lr.requires_grad_(self.learn_inner_lr)}

    def inner_rates(self, state):
        """(learning rates, adapted parameter names or None for all) of the inner loop (Chapter 3)."""
        return state["inner_lr"], self.adapt_keys

    def adapt(self, state, support_x, support_y):
        """theta_i = Adapt(phi, D_i^train): ``steps`` differentiable gradient steps."""
        check_params(self.model, state["params"])
        lr, keys = self.inner_rates(state)
        return inner_loop(self.inner_loss, state["params"], support_x, support_y, self.steps,
                          lr, first_order=self.first_order, adapt_keys=keys)

    def execution_strategy(self, x: torch.Tensor) -> str:
        """The strategy a meta-batch whose inputs are ``x`` runs with; 'auto' resolved (Chapter 3)."""
        if self._closed_form is not None:
            return "closed-form"
        return super().execution_strategy(x)

    def _closed_form_metrics(self, state, episode):
        # Every task of the meta-batch adapted and scored at once (mlbook.closedform).
        check_params(self.model, state["params"])
        layers, activation = self._closed_form
        lr, keys = self.inner_rates(state)
        lr = check_lrs("inner_lr", lr, self.steps)
        if isinstance(lr, torch.Tensor) and not lr.requires_grad and lr.device.type == "cpu":
            lr = [float(v) for v in lr]  # constants: each step then costs one kernel less per parameter
        adapted = batched_inner_loop(layers, activation, state["params"], episode.support_x,
                                     episode.support_y, self.steps, lr, loss=self.loss,
                                     first_order=self.first_order, adapt_keys=keys)
        output, losses = batched_task_losses(layers, activation, adapted, episode.query_x,
                                             episode.query_y, self.loss)
        metrics = {"loss": losses}
        if self.loss == "cross_entropy":
            metrics["accuracy"] = (output.argmax(-1) == episode.query_y).float().mean(1)
        return metrics

    def meta_backward(self, state, episode, scale: float = 1.0):
        """The trainer's step (Chapter 5); on the closed-form MLP, by hand.

        There the meta-gradient is :func:`mlbook.closedform.batched_meta_gradient`: reverse
        mode through the inner steps written out, the same numbers as autograd's (the tests
        compare both with an unrolled float64 reference) without building a graph. Learned
        inner rates (Meta-SGD, ``learn_inner_lr``) get their gradient the same way.
        """
        lr, keys = self.inner_rates(state)
        if not isinstance(lr, dict):
            lr = check_lrs("inner_lr", lr, self.steps)
        rates = list(lr.values()) if isinstance(lr, dict) else [lr] if isinstance(lr, torch.Tensor) else []
        # By hand the gradients land on the state's own tensors: parameters that all require
        # grad, and rates that are leaves when learned. Anything else keeps autograd.
        if (not self._meta_gradient_by_hand or not all(p.requires_grad for p in state["params"].values())
                or any(r.requires_grad and not r.is_leaf for r in rates)):
            return super().meta_backward(state, episode, scale)
        params = state["params"]
        # The closed form already fixed the model's layers at construction; a dict that still
        # fits their shapes needs no walk over the module (a tenth of a step at this size).
        if len(params) != len(self._closed_form_shapes) or any(
                name not in params or params[name].shape != shape for name, shape in self._closed_form_shapes):
            check_params(self.model, params)
        self.validate_episode(state, episode)
        layers, activation = self._closed_form
        grads, rate_grad, output, losses = batched_meta_gradient(
            layers, activation, state["params"], episode.support_x, episode.support_y, episode.query_x,
            episode.query_y, self.steps, lr, loss=self.loss, first_order=self.first_order, adapt_keys=keys,
            compiled=self.compile)
        found = [(state["params"][name], grads[name]) for name in state["params"]]
        if rate_grad is not None:
            found += ([(lr[name], rate_grad[name]) for name in lr] if isinstance(lr, dict) else [(lr, rate_grad)])
        for tensor, grad in found:
            if not tensor.requires_grad:
                continue
            # Under bfloat16 autocast the closed form's products come out in bfloat16; autograd
            # would hand a leaf its gradient in the leaf's own dtype, and so does this path.
            grad = (grad * scale if scale != 1.0 else grad).to(tensor.dtype)
            tensor.grad = grad if tensor.grad is None else tensor.grad + grad
        accuracy = None
        if self.loss == "cross_entropy":
            accuracy = (output.argmax(-1) == episode.query_y).float().mean()
        return losses.mean(), accuracy

    def predict(self, task_state, x):
        """f_theta(x) with the adapted parameters."""
        return call(self.model, task_state, x)

    def __repr__(self) -> str:
        order = "first" if self.first_order else "second"
        return f"{type(self).__name__}(inner_lr={self.inner_lr}, steps={self.steps}, {order} order)"


class FOMAML(MAML):
    """First-order MAML: the inner gradients are treated as constants (Chapter 3)."""

    name = "FOMAML"
    options = ("inner_lr", "inner_steps")

    def __init__(self, model: nn.Module, **kwargs):
        kwargs["first_order"] = True
        super().__init__(model, **kwargs)
