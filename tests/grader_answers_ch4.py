"""Answers to Chapter 4's exercises as students write them (see grader_answers_ch1.py)."""
import math

import torch
import torch.nn.functional as F


# -- Meta-SGD step -----------------------------------------------------------------------------
def metasgd_sign(params, grads, rates):
    return {k: params[k] + rates[k] * grads[k] for k in params}


def metasgd_scalar(params, grads, rates):
    return {k: params[k] - rates[k].mean() * grads[k] for k in params}


def metasgd_abs(params, grads, rates):
    return {k: params[k] - rates[k].abs() * grads[k] for k in params}


def metasgd_no_rates(params, grads, rates):
    return {k: params[k] - grads[k] for k in params}


def metasgd_step_only(params, grads, rates):
    return {k: -rates[k] * grads[k] for k in params}


def metasgd_detached_rates(params, grads, rates):
    return {k: params[k] - rates[k].detach() * grads[k] for k in params}


def metasgd_no_grad(params, grads, rates):
    with torch.no_grad():
        return {k: params[k] - rates[k] * grads[k] for k in params}


def metasgd_inplace(params, grads, rates):
    for k in params:
        params[k].data.sub_(rates[k] * grads[k])
    return {k: params[k] for k in params}


def metasgd_first_rate(params, grads, rates):
    first = next(iter(rates.values()))
    return {k: params[k] - first.flatten()[0] * grads[k] for k in params}


def metasgd_matmul(params, grads, rates):
    return {k: params[k] - rates[k] @ grads[k] if rates[k].dim() == 2 and rates[k].shape[0] == rates[k].shape[1]
            else params[k] - rates[k] * grads[k] for k in params}


def metasgd_addcmul(params, grads, rates):
    return {k: torch.addcmul(params[k], rates[k], grads[k], value=-1) for k in params}


def metasgd_loop_float64(params, grads, rates):
    out = {}
    for name in params.keys():
        out[name] = (params[name].double() - rates[name].double() * grads[name].double()).float()
    return out


# -- class aggregation -------------------------------------------------------------------------
def aggregation_sum(r, labels, ways):
    return F.one_hot(labels, ways).to(r.dtype).T @ r


def aggregation_global(r, labels, ways):
    return r.mean(0, keepdim=True).expand(ways, -1)


def aggregation_nan(r, labels, ways):
    onehot = F.one_hot(labels, ways).to(r.dtype)
    return onehot.T @ r / onehot.sum(0)[:, None]


def aggregation_blocks(r, labels, ways):
    return r.reshape(ways, -1, r.shape[-1]).mean(1)


def aggregation_count_plus_one(r, labels, ways):
    onehot = F.one_hot(labels, ways).to(r.dtype)
    return onehot.T @ r / (onehot.sum(0) + 1)[:, None]


def aggregation_transposed(r, labels, ways):
    onehot = F.one_hot(labels, ways).to(r.dtype)
    return (onehot.T @ r / onehot.sum(0).clamp(min=1)[:, None]).T


def aggregation_detached(r, labels, ways):
    onehot = F.one_hot(labels, ways).to(r.dtype)
    return (onehot.T @ r.detach()) / onehot.sum(0).clamp(min=1)[:, None]


def aggregation_new_tensor(r, labels, ways):
    rows = [[r[labels == c].mean(0)[d].item() if (labels == c).any() else 0.0 for d in range(r.shape[1])]
            for c in range(ways)]
    return torch.tensor(rows)


def aggregation_inplace(r, labels, ways):
    onehot = F.one_hot(labels, ways).to(r.dtype)
    r.data.div_(onehot.sum(0).clamp(min=1)[labels][:, None])
    return onehot.T @ r


def aggregation_unique(r, labels, ways):
    return torch.stack([r[labels == c].mean(0) for c in labels.unique()])


def aggregation_loop(r, labels, ways):
    rows = []
    for c in range(ways):
        mask = labels == c
        rows.append(r[mask].mean(0) if mask.any() else r.new_zeros(r.shape[1]))
    return torch.stack(rows)


def aggregation_index_add(r, labels, ways):
    total = torch.zeros(ways, r.shape[1], dtype=r.dtype).index_add(0, labels, r)
    counts = torch.bincount(labels, minlength=ways).clamp(min=1).to(r.dtype)
    return total / counts[:, None]


# -- Gaussian NLL ------------------------------------------------------------------------------
def nll_no_log(mean, variance, y):
    return ((y - mean) ** 2 / (2 * variance)).mean()


def nll_std(mean, variance, y):
    s = variance.sqrt()
    return (0.5 * torch.log(2 * math.pi * s) + (y - mean) ** 2 / (2 * s)).mean()


def nll_squared_variance(mean, variance, y):
    s2 = variance ** 2
    return (0.5 * torch.log(2 * math.pi * s2) + (y - mean) ** 2 / (2 * s2)).mean()


def nll_no_two_pi(mean, variance, y):
    return (0.5 * torch.log(variance) + (y - mean) ** 2 / (2 * variance)).mean()


def nll_sum(mean, variance, y):
    return (0.5 * torch.log(2 * math.pi * variance) + (y - mean) ** 2 / (2 * variance)).sum()


def nll_sign(mean, variance, y):
    return -(0.5 * torch.log(2 * math.pi * variance) + (y - mean) ** 2 / (2 * variance)).mean()


def nll_no_half_log(mean, variance, y):
    return (torch.log(2 * math.pi * variance) + (y - mean) ** 2 / (2 * variance)).mean()


def nll_no_half_square(mean, variance, y):
    return (0.5 * torch.log(2 * math.pi * variance) + (y - mean) ** 2 / variance).mean()


def nll_detached_variance(mean, variance, y):
    v = variance.detach()
    return (0.5 * torch.log(2 * math.pi * v) + (y - mean) ** 2 / (2 * v)).mean()


def nll_item(mean, variance, y):
    return (0.5 * torch.log(2 * math.pi * variance) + (y - mean) ** 2 / (2 * variance)).mean().item()


def nll_inplace(mean, variance, y):
    y.data.sub_(mean.data)
    return (0.5 * torch.log(2 * math.pi * variance) + y ** 2 / (2 * variance)).mean()


def nll_distributions(mean, variance, y):
    return -torch.distributions.Normal(mean, variance.sqrt()).log_prob(y).mean()


def nll_functional(mean, variance, y):
    return F.gaussian_nll_loss(mean, y, variance, full=True)


CATALOGUE = {
    "ch4.check_metasgd_step": {
        "wrong": [(metasgd_sign, "wrong sign"), (metasgd_scalar, "one scalar rate"), (metasgd_abs, "\\|rates\\|"),
                  (metasgd_no_rates, "rates are not used"), (metasgd_step_only, "not the step"),
                  (metasgd_detached_rates, "reaches `rates"), (metasgd_no_grad, "no gradient:"),
                  (metasgd_inplace, "changed its input `params"), (metasgd_first_rate, "differs"),
                  (metasgd_matmul, "differs")],
        "right": [metasgd_addcmul, metasgd_loop_float64],
    },
    "ch4.check_class_aggregation": {
        "wrong": [(aggregation_sum, "per-class sum"), (aggregation_global, "whatever their label"),
                  (aggregation_nan, "NaN"), (aggregation_blocks, "blocks of consecutive rows"),
                  (aggregation_count_plus_one, "off-by-one"), (aggregation_transposed, "transpose"),
                  (aggregation_detached, "no gradient:"), (aggregation_new_tensor, "no gradient:"),
                  (aggregation_inplace, "changed its input `r`"), (aggregation_unique, "shape")],
        "right": [aggregation_loop, aggregation_index_add],
    },
    "ch4.check_gaussian_nll": {
        "wrong": [(nll_no_log, "without its 0.5 log"), (nll_std, "std vs variance"),
                  (nll_squared_variance, "do not square it"), (nll_no_two_pi, "without the 2 pi"),
                  (nll_sum, "sum over entries"), (nll_sign, "sign is flipped"),
                  (nll_no_half_log, "log\\(2 pi variance\\) without the factor 1/2"),
                  (nll_no_half_square, "variance without the factor 1/2"),
                  (nll_detached_variance, "reaches `variance`"), (nll_item, "should be a torch.Tensor"),
                  (nll_inplace, "changed its input `y`")],
        "right": [nll_distributions, nll_functional],
    },
}
