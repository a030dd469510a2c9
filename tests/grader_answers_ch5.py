"""Answers to Chapter 5's exercises as students write them (see grader_answers_ch1.py)."""
import math
import statistics

import torch
import torch.nn.functional as F


# -- prototypes --------------------------------------------------------------------------------
def proto_sum(embeddings, labels, ways):
    return torch.stack([embeddings[labels == n].sum(0) for n in range(ways)])


def proto_blocks(embeddings, labels, ways):
    return embeddings.reshape(ways, -1, embeddings.shape[-1]).mean(1)


def proto_global(embeddings, labels, ways):
    return embeddings.mean(0, keepdim=True).repeat(ways, 1)


def proto_first(embeddings, labels, ways):
    return torch.stack([embeddings[labels == n][0] for n in range(ways)])


def proto_count_plus_one(embeddings, labels, ways):
    onehot = F.one_hot(labels, ways).to(embeddings.dtype)
    return onehot.T @ embeddings / (onehot.sum(0) + 1)[:, None]


def proto_detached(embeddings, labels, ways):
    return torch.stack([embeddings[labels == n].mean(0) for n in range(ways)]).detach()


def proto_numpy(embeddings, labels, ways):
    z, y = embeddings.detach().numpy(), labels.numpy()
    return torch.from_numpy(__import__("numpy").stack([z[y == n].mean(0) for n in range(ways)]))


def proto_transposed(embeddings, labels, ways):
    return torch.stack([embeddings[labels == n].mean(0) for n in range(ways)], dim=1)


def proto_inplace_sort(embeddings, labels, ways):
    order = labels.argsort()
    labels.copy_(labels[order])
    return torch.stack([embeddings[order][labels == n].mean(0) for n in range(ways)])


def proto_matmul(embeddings, labels, ways):
    onehot = F.one_hot(labels, ways).to(embeddings.dtype)
    return onehot.T @ embeddings / onehot.sum(0)[:, None]


def proto_index_add_float32(embeddings, labels, ways):
    z = embeddings.float()
    total = torch.zeros(ways, z.shape[1]).index_add(0, labels, z)
    return (total / torch.bincount(labels, minlength=ways)[:, None]).double()


# -- prototypical loss ----------------------------------------------------------------------------
def _d2(query, prototypes):
    return ((query[:, None] - prototypes[None]) ** 2).sum(-1)


def loss_unsquared(query, query_y, prototypes):
    return F.cross_entropy(-torch.cdist(query, prototypes), query_y)


def loss_sign(query, query_y, prototypes):
    return F.cross_entropy(_d2(query, prototypes), query_y)


def loss_sum(query, query_y, prototypes):
    return F.cross_entropy(-_d2(query, prototypes), query_y, reduction="sum")


def loss_mean_over_dims(query, query_y, prototypes):
    return F.cross_entropy(-((query[:, None] - prototypes[None]) ** 2).mean(-1), query_y)


def loss_half(query, query_y, prototypes):
    return F.cross_entropy(-0.5 * _d2(query, prototypes), query_y)


def loss_nll_raw(query, query_y, prototypes):
    return F.nll_loss(-_d2(query, prototypes), query_y)


def loss_detached_prototypes(query, query_y, prototypes):
    return F.cross_entropy(-_d2(query, prototypes.detach()), query_y)


def loss_detached_query(query, query_y, prototypes):
    return F.cross_entropy(-_d2(query.detach(), prototypes), query_y)


def loss_item(query, query_y, prototypes):
    return F.cross_entropy(-_d2(query, prototypes), query_y).item()


def loss_normalises_inplace(query, query_y, prototypes):
    query.data.div_(query.data.norm(dim=1, keepdim=True))
    return F.cross_entropy(-_d2(query, prototypes), query_y)


def loss_expanded(query, query_y, prototypes):
    d2 = (query ** 2).sum(1, keepdim=True) - 2 * query @ prototypes.T + (prototypes ** 2).sum(1)[None]
    return F.cross_entropy(-d2, query_y)


def loss_log_softmax_loop(query, query_y, prototypes):
    total = 0
    for q, label in zip(query, query_y):
        logits = -((q[None] - prototypes) ** 2).sum(1)
        total = total - torch.log_softmax(logits, 0)[label]
    return total / len(query_y)


# -- accuracy CI -----------------------------------------------------------------------------------
def ci_population(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.mean().item(), 1.96 * a.std(unbiased=False).item() / math.sqrt(a.numel())


def ci_no_sqrt(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.mean().item(), 1.96 * a.std().item()


def ci_variance(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.mean().item(), 1.96 * a.var().item() / math.sqrt(a.numel())


def ci_no_z(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.mean().item(), a.std().item() / math.sqrt(a.numel())


def ci_90(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.mean().item(), 1.645 * a.std().item() / math.sqrt(a.numel())


def ci_divide_e(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.mean().item(), 1.96 * a.std().item() / a.numel()


def ci_full_width(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.mean().item(), 2 * 1.96 * a.std().item() / math.sqrt(a.numel())


def ci_interval(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    half = 1.96 * a.std().item() / math.sqrt(a.numel())
    return a.mean().item(), (a.mean().item() - half, a.mean().item() + half)


def ci_sum(accuracies):
    a = torch.as_tensor(accuracies, dtype=torch.float64)
    return a.sum().item(), 1.96 * a.std().item() / math.sqrt(a.numel())


def ci_centres_inplace(accuracies):
    mean = accuracies.mean().item()
    accuracies -= mean
    return mean, 1.96 * accuracies.std().item() / math.sqrt(accuracies.numel())


def ci_statistics(accuracies):
    values = [float(v) for v in accuracies]
    return statistics.fmean(values), 1.96 * statistics.stdev(values) / len(values) ** 0.5


def ci_manual_tensor(accuracies):
    a = accuracies.double()
    mean = a.sum() / len(a)
    s = (((a - mean) ** 2).sum() / (len(a) - 1)).sqrt()
    return mean, 1.96 * s / len(a) ** 0.5


CATALOGUE = {
    "ch5.check_class_prototypes": {
        "wrong": [(proto_sum, "per-class sum"), (proto_blocks, "blocks of consecutive rows"),
                  (proto_global, "whatever their label"), (proto_first, "first example of each class"),
                  (proto_count_plus_one, "off-by-one"), (proto_detached, "no gradient:"),
                  (proto_numpy, "no gradient:"), (proto_transposed, "transpose"),
                  (proto_inplace_sort, "changed its input `labels`")],
        "right": [proto_matmul, proto_index_add_float32],
    },
    "ch5.check_prototypical_loss": {
        "wrong": [(loss_unsquared, "not squared"), (loss_sign, "sign is wrong"), (loss_sum, "sum over queries"),
                  (loss_mean_over_dims, "averaged over dimensions"), (loss_half, "half the squared distance"),
                  (loss_nll_raw, "nll_loss on raw logits"), (loss_detached_prototypes, "reaches `prototypes`"),
                  (loss_detached_query, "reaches `query`"), (loss_item, "should be a torch.Tensor"),
                  (loss_normalises_inplace, "changed its input `query`")],
        "right": [loss_expanded, loss_log_softmax_loop],
    },
    "ch5.check_accuracy_ci": {
        "wrong": [(ci_population, "population std"), (ci_no_sqrt, "without dividing by sqrt"),
                  (ci_variance, "variance"), (ci_no_z, "without the 1.96"), (ci_90, "90%"),
                  (ci_divide_e, "instead of sqrt"), (ci_full_width, "full width"), (ci_interval, "not the interval"),
                  (ci_sum, "the sum"), (ci_centres_inplace, "changed its input `accuracies`")],
        "right": [ci_statistics, ci_manual_tensor],
    },
}
