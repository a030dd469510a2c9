"""Answers to Chapter 3's exercises as students write them (see grader_answers_ch1.py)."""
import torch

from mlbook.checks.ch3 import reference_first_order_grad, reference_unrolled_adapt


# -- unrolled adapt --------------------------------------------------------------------------
def unrolled_no_graph(loss_fn, params, x, y, lrs):
    for lr in lrs:
        grads = torch.autograd.grad(loss_fn(params, x, y), list(params.values()), retain_graph=True)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    return params


def unrolled_first_rate(loss_fn, params, x, y, lrs):
    return reference_unrolled_adapt(loss_fn, params, x, y, [lrs[0]] * len(lrs))


def unrolled_item(loss_fn, params, x, y, lrs):
    return reference_unrolled_adapt(loss_fn, params, x, y, [lr.item() for lr in lrs])


def unrolled_detached_rates(loss_fn, params, x, y, lrs):
    return reference_unrolled_adapt(loss_fn, params, x, y, lrs.detach())


def unrolled_reversed(loss_fn, params, x, y, lrs):
    return reference_unrolled_adapt(loss_fn, params, x, y, list(reversed(lrs)))


def unrolled_skip_last(loss_fn, params, x, y, lrs):
    for t in range(len(lrs) - 1):
        grads = torch.autograd.grad(loss_fn(params, x, y), list(params.values()), create_graph=True)
        params = {n: p - lrs[t] * g for (n, p), g in zip(params.items(), grads)}
    return params


def unrolled_ascent(loss_fn, params, x, y, lrs):
    return reference_unrolled_adapt(loss_fn, params, x, y, [-lr for lr in lrs])


def unrolled_detach_params(loss_fn, params, x, y, lrs):
    params = {n: p.detach().requires_grad_() for n, p in params.items()}
    return reference_unrolled_adapt(loss_fn, params, x, y, lrs)


def unrolled_no_grad_mode(loss_fn, params, x, y, lrs):
    out = reference_unrolled_adapt(loss_fn, params, x, y, lrs)
    torch.set_grad_enabled(False)
    return out


def unrolled_inplace_x(loss_fn, params, x, y, lrs):
    out = reference_unrolled_adapt(loss_fn, params, x, y, lrs)
    x.data.mul_(0)
    return out


def unrolled_index_loop(loss_fn, params, x, y, lrs):
    names = list(params)
    for t in range(lrs.shape[0]):
        loss = loss_fn(params, x, y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        params = {n: params[n] - lrs[t] * g for n, g in zip(names, grads)}
    return params


def unrolled_add_alpha(loss_fn, params, x, y, lrs):
    for lr in lrs.unbind(0):
        grads = torch.autograd.grad(loss_fn(params, x, y), tuple(params.values()), create_graph=True)
        params = dict(zip(params, (p + (-lr) * g for p, g in zip(params.values(), grads))))
    return params


# -- first-order gradient --------------------------------------------------------------------
def fo_at_phi(loss_fn, params, sx, sy, qx, qy, lr, steps):
    return dict(zip(params, torch.autograd.grad(loss_fn(params, qx, qy), list(params.values()))))


def fo_support(loss_fn, params, sx, sy, qx, qy, lr, steps):
    return reference_first_order_grad(loss_fn, params, sx, sy, sx, sy, lr, steps)


def fo_fit_query(loss_fn, params, sx, sy, qx, qy, lr, steps):
    return reference_first_order_grad(loss_fn, params, qx, qy, qx, qy, lr, steps)


def fo_one_less(loss_fn, params, sx, sy, qx, qy, lr, steps):
    return reference_first_order_grad(loss_fn, params, sx, sy, qx, qy, lr, steps - 1)


def fo_one_more(loss_fn, params, sx, sy, qx, qy, lr, steps):
    return reference_first_order_grad(loss_fn, params, sx, sy, qx, qy, lr, steps + 1)


def fo_ascent(loss_fn, params, sx, sy, qx, qy, lr, steps):
    return reference_first_order_grad(loss_fn, params, sx, sy, qx, qy, -lr, steps)


def fo_second_order(loss_fn, params, sx, sy, qx, qy, lr, steps):
    theta = reference_unrolled_adapt(loss_fn, params, sx, sy, [lr] * steps)
    return dict(zip(params, torch.autograd.grad(loss_fn(theta, qx, qy), list(params.values()))))


def fo_returns_theta(loss_fn, params, sx, sy, qx, qy, lr, steps):
    theta = {k: v.detach() for k, v in params.items()}
    for _ in range(steps):
        theta = {k: v.requires_grad_() for k, v in theta.items()}
        grads = torch.autograd.grad(loss_fn(theta, sx, sy), list(theta.values()))
        theta = {k: (v - lr * g).detach() for (k, v), g in zip(theta.items(), grads)}
    return theta


def fo_data_inplace(loss_fn, params, sx, sy, qx, qy, lr, steps):
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(params, sx, sy), list(params.values()))
        for p, g in zip(params.values(), grads):
            p.data -= lr * g
    return dict(zip(params, torch.autograd.grad(loss_fn(params, qx, qy), list(params.values()))))


def fo_backward(loss_fn, params, sx, sy, qx, qy, lr, steps):
    theta = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    for _ in range(steps):
        loss_fn(theta, sx, sy).backward()
        with torch.no_grad():
            for v in theta.values():
                v -= lr * v.grad
                v.grad = None
    loss_fn(theta, qx, qy).backward()
    return {k: v.grad for k, v in theta.items()}


def fo_float64_loop(loss_fn, params, sx, sy, qx, qy, lr, steps):
    theta = {k: v.detach().double().requires_grad_() for k, v in params.items()}
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(theta, sx.double(), sy.double()), list(theta.values()))
        theta = {k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(theta.items(), grads)}
    grads = torch.autograd.grad(loss_fn(theta, qx.double(), qy.double()), list(theta.values()))
    return {k: g for k, g in zip(theta, grads)}


# -- Reptile -----------------------------------------------------------------------------------
def _mean(thetas, k):
    return torch.stack([t[k] for t in thetas]).mean(0)


def reptile_sign(phi, thetas, epsilon):
    return {k: phi[k] - epsilon * (_mean(thetas, k) - phi[k]) for k in phi}


def reptile_last(phi, thetas, epsilon):
    return {k: phi[k] + epsilon * (thetas[-1][k] - phi[k]) for k in phi}


def reptile_first(phi, thetas, epsilon):
    return {k: phi[k] + epsilon * (thetas[0][k] - phi[k]) for k in phi}


def reptile_sum(phi, thetas, epsilon):
    return {k: phi[k] + epsilon * sum(t[k] - phi[k] for t in thetas) for k in phi}


def reptile_no_epsilon(phi, thetas, epsilon):
    return {k: _mean(thetas, k) for k in phi}


def reptile_no_phi_inside(phi, thetas, epsilon):
    return {k: phi[k] + epsilon * _mean(thetas, k) for k in phi}


def reptile_step_only(phi, thetas, epsilon):
    return {k: epsilon * (_mean(thetas, k) - phi[k]) for k in phi}


def reptile_inplace(phi, thetas, epsilon):
    for k in phi:
        phi[k] += epsilon * (_mean(thetas, k) - phi[k])
    return phi


def reptile_overwrites_thetas(phi, thetas, epsilon):
    # a cheat: makes every theta equal the answer's target, then "updates"
    for t in thetas:
        for k in t:
            t[k].copy_(phi[k])
    return {k: phi[k] + epsilon * (_mean(thetas, k) - phi[k]) for k in phi}


def reptile_interpolate(phi, thetas, epsilon):
    return {k: torch.lerp(phi[k], torch.stack([t[k] for t in thetas]).mean(0), epsilon) for k in phi}


def reptile_loop(phi, thetas, epsilon):
    new = {}
    for k in phi:
        total = torch.zeros_like(phi[k])
        for t in thetas:
            total = total + (t[k] - phi[k])
        new[k] = phi[k] + epsilon * total / len(thetas)
    return new


CATALOGUE = {
    "ch3.check_unrolled_adapt": {
        "wrong": [(unrolled_no_graph, "second-order term is missing"), (unrolled_first_rate, "lrs\\[0\\]"),
                  (unrolled_item, "reaches `lrs`"), (unrolled_detached_rates, "reaches `lrs`"),
                  (unrolled_reversed, "reverse order"), (unrolled_skip_last, "off-by-one"),
                  (unrolled_ascent, "wrong sign"), (unrolled_detach_params, "reaches `params"),
                  (unrolled_no_grad_mode, "left gradient tracking switched off"),
                  (unrolled_inplace_x, "changed its input `x`")],
        "right": [unrolled_index_loop, unrolled_add_alpha],
    },
    "ch3.check_first_order_grad": {
        "wrong": [(fo_at_phi, "before adapting"), (fo_support, "support loss"),
                  (fo_fit_query, "adapting on the query set"), (fo_one_less, "off-by-one"),
                  (fo_one_more, "off-by-one"), (fo_ascent, "wrong sign"), (fo_second_order, "second-order"),
                  (fo_returns_theta, "not a gradient"), (fo_data_inplace, "changed its input")],
        "right": [fo_backward, fo_float64_loop],
    },
    "ch3.check_reptile_update": {
        "wrong": [(reptile_sign, "wrong sign"), (reptile_last, "last task only"),
                  (reptile_first, "first task only"), (reptile_sum, "sum over tasks"),
                  (reptile_no_epsilon, "epsilon is not used"), (reptile_no_phi_inside, "subtract phi"),
                  (reptile_step_only, "add it to phi"), (reptile_inplace, "changed its input `phi"),
                  (reptile_overwrites_thetas, "changed its input `thetas")],
        "right": [reptile_interpolate, reptile_loop],
    },
}
