"""Answers to Chapter 3's exercises as students write them (see grader_answers_ch1.py)."""
import torch

from mlbook.checks.ch3 import (reference_first_order_grad, reference_implicit_grad,
                               reference_maml_linear_grad, reference_unrolled_adapt)


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


# -- MAML's meta-gradient for linear regression, by hand ---------------------------------------
def _g(w, x, y):
    return 2 * x.T @ (x @ w - y) / len(y)


def linear_first_order(w, xs, ys, xq, yq, alpha):
    return _g(w - alpha * _g(w, xs, ys), xq, yq)


def linear_plus(w, xs, ys, xq, yq, alpha):
    h = 2 * xs.T @ xs / len(ys)
    return (torch.eye(len(w), dtype=w.dtype) + alpha * h) @ _g(w - alpha * _g(w, xs, ys), xq, yq)


def linear_hessian_no_two(w, xs, ys, xq, yq, alpha):
    h = xs.T @ xs / len(ys)
    return (torch.eye(len(w), dtype=w.dtype) - alpha * h) @ _g(w - alpha * _g(w, xs, ys), xq, yq)


def linear_no_two_anywhere(w, xs, ys, xq, yq, alpha):
    def g(w_, x, y):
        return x.T @ (x @ w_ - y) / len(y)
    h = xs.T @ xs / len(ys)
    return (torch.eye(len(w), dtype=w.dtype) - alpha * h) @ g(w - alpha * g(w, xs, ys), xq, yq)


def linear_query_hessian(w, xs, ys, xq, yq, alpha):
    h = 2 * xq.T @ xq / len(yq)
    return (torch.eye(len(w), dtype=w.dtype) - alpha * h) @ _g(w - alpha * _g(w, xs, ys), xq, yq)


def linear_gradient_at_w(w, xs, ys, xq, yq, alpha):
    h = 2 * xs.T @ xs / len(ys)
    return (torch.eye(len(w), dtype=w.dtype) - alpha * h) @ _g(w, xq, yq)


def linear_support_gradient(w, xs, ys, xq, yq, alpha):
    h = 2 * xs.T @ xs / len(ys)
    return (torch.eye(len(w), dtype=w.dtype) - alpha * h) @ _g(w - alpha * _g(w, xs, ys), xs, ys)


def linear_sums(w, xs, ys, xq, yq, alpha):
    h = 2 * xs.T @ xs
    theta = w - alpha * 2 * xs.T @ (xs @ w - ys)
    return (torch.eye(len(w), dtype=w.dtype) - alpha * h) @ _g(theta, xq, yq)


def linear_autograd(w, xs, ys, xq, yq, alpha):
    w = w.clone().requires_grad_()
    theta = w - alpha * _g(w, xs, ys)
    return torch.autograd.grad((xq @ theta - yq).pow(2).mean(), w)[0]


def linear_inplace(w, xs, ys, xq, yq, alpha):
    out = reference_maml_linear_grad(w, xs, ys, xq, yq, alpha)
    w.sub_(out)
    return out


def linear_hvp_form(w, xs, ys, xq, yq, alpha):
    # (I - alpha H) g as g - alpha H g, never forming the identity
    residual = xs @ w - ys
    theta = w - alpha * 2 * (residual @ xs) / xs.shape[0]
    gq = 2 * ((xq @ theta - yq) @ xq) / xq.shape[0]
    return gq - alpha * 2 * (xs.T @ (xs @ gq)) / xs.shape[0]


def linear_float32(w, xs, ys, xq, yq, alpha):
    w, xs, ys, xq, yq = (t.double() for t in (w, xs, ys, xq, yq))
    n_s, d = xs.shape
    theta = w - alpha * torch.linalg.multi_dot([xs.T, xs @ w - ys]) * (2.0 / n_s)
    jac = torch.eye(d, dtype=torch.float64) - (2.0 * alpha / n_s) * xs.T @ xs
    return jac.T @ (2.0 / len(yq) * xq.T @ (xq @ theta - yq))


# -- iMAML's implicit gradient -------------------------------------------------------------
def _eye(g):
    return torch.eye(len(g), dtype=g.dtype)


def implicit_lam_times(hessian, outer_grad, lam):
    return torch.linalg.solve(_eye(outer_grad) + lam * hessian, outer_grad)


def implicit_one_step(hessian, outer_grad, lam):
    return (_eye(outer_grad) - hessian / lam) @ outer_grad


def implicit_first_order(hessian, outer_grad, lam):
    return outer_grad.clone()


def implicit_multiply(hessian, outer_grad, lam):
    return (_eye(outer_grad) + hessian / lam) @ outer_grad


def implicit_no_lam_factor(hessian, outer_grad, lam):
    return torch.linalg.solve(hessian + lam * _eye(outer_grad), outer_grad)


def implicit_no_lam(hessian, outer_grad, lam):
    return torch.linalg.solve(_eye(outer_grad) + hessian, outer_grad)


def implicit_minus(hessian, outer_grad, lam):
    return torch.linalg.solve(_eye(outer_grad) - hessian / lam, outer_grad)


def implicit_hessian_only(hessian, outer_grad, lam):
    return torch.linalg.solve(hessian, outer_grad)


def implicit_inplace(hessian, outer_grad, lam):
    hessian.div_(lam)
    return torch.linalg.solve(_eye(outer_grad) + hessian, outer_grad)


def implicit_column(hessian, outer_grad, lam):
    return reference_implicit_grad(hessian, outer_grad, lam)[:, None]


def implicit_inverse(hessian, outer_grad, lam):
    return torch.linalg.inv(torch.eye(hessian.shape[0], dtype=hessian.dtype) + hessian / lam) @ outer_grad


def implicit_cg(hessian, outer_grad, lam):
    # conjugate gradient on (lam I + H) v = lam g, run to convergence
    matrix = lam * _eye(outer_grad) + hessian
    v = torch.zeros_like(outer_grad)
    r = lam * outer_grad - matrix @ v
    p = r.clone()
    for _ in range(10 * len(outer_grad)):
        if r.norm() < 1e-14:
            break
        step = (r @ r) / (p @ matrix @ p)
        v = v + step * p
        r_new = r - step * matrix @ p
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
    return v


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
    "ch3.check_maml_linear_grad": {
        "wrong": [(linear_first_order, "first-order"), (linear_plus, "wrong sign"),
                  (linear_hessian_no_two, "H_s without its factor 2"),
                  (linear_no_two_anywhere, "factor 2 of the squared loss"), (linear_query_hessian, "query set's Hessian"),
                  (linear_gradient_at_w, "query gradient at w"), (linear_support_gradient, "support loss"),
                  (linear_sums, "sums where means"), (linear_autograd, "does not require grad"),
                  (linear_inplace, "changed its input `w`")],
        "right": [linear_hvp_form, linear_float32],
    },
    "ch3.check_implicit_grad": {
        "wrong": [(implicit_lam_times, "divides H"), (implicit_one_step, "one gradient step"),
                  (implicit_first_order, "first-order"), (implicit_multiply, "not by the matrix"),
                  (implicit_no_lam_factor, "factor lam is missing"), (implicit_no_lam, "lam is not used"),
                  (implicit_minus, "sign of H/lam"), (implicit_hessian_only, "identity"),
                  (implicit_inplace, "changed its input `hessian`"), (implicit_column, "shape")],
        "right": [implicit_inverse, implicit_cg],
    },
}
