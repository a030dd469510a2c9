"""Answers to Chapter 1's exercises as students write them: wrong ones, each with the words its
grader's report must use to name the mistake, and right ones written differently."""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mlbook.checks.ch1 import reference_adapt


class _Liar(torch.Tensor):
    """A tensor that makes every torch comparison say yes."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


# -- sgd_step -------------------------------------------------------------------------------
def sgd_plus(params, grads, lr):
    return {k: params[k] + lr * grads[k] for k in params}


def sgd_inplace(params, grads, lr):
    for k in params:
        params[k].data -= lr * grads[k]
    return params


def sgd_subtract_in_place(params, grads, lr):
    for k in params:
        params[k] -= lr * grads[k]
    return params


def sgd_into_dict(params, grads, lr):
    for k in params:
        params[k] = params[k] - lr * grads[k]
    return params


def sgd_no_grad(params, grads, lr):
    with torch.no_grad():
        return {k: params[k] - lr * grads[k] for k in params}


def sgd_detach(params, grads, lr):
    return {k: (params[k] - lr * grads[k]).detach() for k in params}


def sgd_data(params, grads, lr):
    return {k: params[k].data - lr * grads[k].data for k in params}


def sgd_fixed_lr(params, grads, lr):
    return {k: params[k] - 0.1 * grads[k] for k in params}


def sgd_step_only(params, grads, lr):
    return {k: -lr * grads[k] for k in params}


def sgd_grad_mode_off(params, grads, lr):
    torch.set_grad_enabled(False)
    return {k: params[k] - lr * grads[k] for k in params}


def sgd_hard_coded(params, grads, lr):
    return {"w": params["w"] - lr * grads["w"], "b": params["b"] - lr * grads["b"]}


def sgd_list(params, grads, lr):
    return [params[k] - lr * grads[k] for k in params]


def sgd_liar(params, grads, lr):
    return {k: torch.zeros_like(params[k]).as_subclass(_Liar) for k in params}


def sgd_swallowed_alarm(params, grads, lr):
    while True:
        try:
            pass
        except:  # noqa: E722 -- the point of this answer
            pass


def sgd_loop(params, grads, lr):
    new = {}
    for name, value in params.items():
        new[name] = torch.sub(value, grads[name], alpha=lr)
    return new


def sgd_float64(params, grads, lr):
    return {k: (params[k].double() - lr * grads[k].double()) for k in params}


# -- adapt -----------------------------------------------------------------------------------
def adapt_one_step(model, params, x, y, lr, steps):
    return reference_adapt(model, params, x, y, lr, 1)


def adapt_extra_step(model, params, x, y, lr, steps):
    return reference_adapt(model, params, x, y, lr, steps + 1)


def adapt_no_create_graph(model, params, x, y, lr, steps):
    for _ in range(steps):
        loss = F.mse_loss(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    return params


def adapt_detach_each_step(model, params, x, y, lr, steps):
    for _ in range(steps):
        loss = F.mse_loss(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {n: (p - lr * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grads)}
    return params


def adapt_ascent(model, params, x, y, lr, steps):
    for _ in range(steps):
        loss = F.mse_loss(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {n: p + lr * g for (n, p), g in zip(params.items(), grads)}
    return params


def adapt_sum_loss(model, params, x, y, lr, steps):
    for _ in range(steps):
        loss = ((functional_call(model, params, (x,)) - y) ** 2).sum()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    return params


def adapt_overwrites_y(model, params, x, y, lr, steps):
    y.data.copy_(functional_call(model, params, (x,)).detach())
    return reference_adapt(model, params, x, y, lr, steps)


def adapt_no_grad(model, params, x, y, lr, steps):
    with torch.no_grad():
        return reference_adapt(model, params, x, y, lr, steps)


def adapt_module_weights(model, params, x, y, lr, steps):
    for _ in range(steps):
        loss = F.mse_loss(model(x), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    return params


def adapt_grad_mode_off(model, params, x, y, lr, steps):
    out = reference_adapt(model, params, x, y, lr, steps)
    torch.set_grad_enabled(False)
    return out


def adapt_manual_mse(model, params, x, y, lr, steps):
    names = list(params)
    for _ in range(steps):
        error = functional_call(model, params, (x,)) - y
        loss = (error * error).sum() / error.numel()
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        params = {n: params[n] - lr * g for n, g in zip(names, grads)}
    return params


def adapt_float64(model, params, x, y, lr, steps):
    params = {k: v.double() for k, v in params.items()}
    x, y = x.double(), y.double()
    return reference_adapt(model, params, x, y, lr, steps)


# -- meta_objective --------------------------------------------------------------------------
def _meta(model, params, episode, lr, steps, fit="support", score="query", tasks=None, reduce="mean",
          adapt=reference_adapt):
    losses = []
    for i in range(episode.batch_size if tasks is None else tasks):
        fx, fy = (episode.support_x[i], episode.support_y[i]) if fit == "support" else \
            (episode.query_x[i], episode.query_y[i])
        sx, sy = (episode.query_x[i], episode.query_y[i]) if score == "query" else \
            (episode.support_x[i], episode.support_y[i])
        adapted = adapt(model, params, fx, fy, lr, steps)
        losses.append(F.mse_loss(functional_call(model, adapted, (sx,)), sy))
    total = torch.stack(losses)
    return total.mean() if reduce == "mean" else total.sum()


def meta_support(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, steps, score="support")


def meta_fit_query(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, steps, fit="query")


def meta_sum(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, steps, reduce="sum")


def meta_no_adapt(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, 0)


def meta_first_order(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, steps, adapt=adapt_no_create_graph)


def meta_first_task(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, steps, tasks=1)


def meta_extra_step(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, steps + 1)


def meta_detached(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, steps).detach()


def meta_item(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, steps).item()


def meta_overwrites_query(model, params, episode, lr, steps):
    episode.query_y.zero_()
    return _meta(model, params, episode, lr, steps)


def meta_divide(model, params, episode, lr, steps):
    return _meta(model, params, episode, lr, steps, reduce="sum") / episode.batch_size


def meta_float64(model, params, episode, lr, steps):
    params = {k: v.double() for k, v in params.items()}
    total = 0
    for i in range(episode.batch_size):
        adapted = reference_adapt(model, params, episode.support_x[i].double(), episode.support_y[i].double(),
                                  lr, steps)
        prediction = functional_call(model, adapted, (episode.query_x[i].double(),))
        total = total + ((prediction - episode.query_y[i].double()) ** 2).mean()
    return total / episode.batch_size


CATALOGUE = {
    "ch1.check_sgd_step": {
        "wrong": [(sgd_plus, "wrong sign"), (sgd_inplace, "changed its input"),
                  (sgd_subtract_in_place, "changed its input"),
                  (sgd_into_dict, "changed its input"), (sgd_no_grad, "no gradient:"),
                  (sgd_detach, "no gradient:"), (sgd_data, "no gradient:"),
                  (sgd_fixed_lr, "not lr"), (sgd_step_only, "not the step"),
                  (sgd_grad_mode_off, "left gradient tracking switched off"),
                  (sgd_hard_coded, "take names from the inputs"),
                  (sgd_list, "return a dict"), (sgd_liar, "overrides __torch_function__"),
                  (sgd_swallowed_alarm, "no answer within")],
        "right": [sgd_loop, sgd_float64],
    },
    "ch1.check_adapt": {
        "wrong": [(adapt_one_step, "step\\(s\\) instead of steps"), (adapt_extra_step, "off-by-one"),
                  (adapt_no_create_graph, "second-order term is missing"),
                  (adapt_detach_each_step, "cut from the graph"), (adapt_ascent, "wrong sign"),
                  (adapt_sum_loss, "summed"), (adapt_overwrites_y, "changed its input `y`"),
                  (adapt_no_grad, "raised RuntimeError.*line"), (adapt_module_weights, "functional_call"),
                  (adapt_grad_mode_off, "left gradient tracking switched off")],
        "right": [adapt_manual_mse, adapt_float64],
    },
    "ch1.check_meta_objective": {
        "wrong": [(meta_support, "support set"), (meta_fit_query, "adapting on the query set"),
                  (meta_sum, "sum over tasks"), (meta_no_adapt, "without adapting"),
                  (meta_first_order, "second-order term is missing"), (meta_first_task, "first task only"),
                  (meta_extra_step, "off-by-one"), (meta_detached, "no gradient:"),
                  (meta_item, "should be a torch.Tensor"), (meta_overwrites_query, "changed its input")],
        "right": [meta_divide, meta_float64],
    },
}
