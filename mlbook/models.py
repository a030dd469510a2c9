"""Backbones written to be called functionally (Chapters 1, 3 and 4).

Parameters live outside the module as a dict of tensors; the forward pass is
``torch.func.functional_call(module, params, x)``. No layer keeps running statistics, so a
model has no hidden state that an inner loop could leak between tasks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from .maxpool import batch_norm_max_pool_2x2, group_norm_max_pool_2x2, max_pool_2x2
from .utils import check_choice, check_positive_int

__all__ = ["MLP", "Conv4", "max_pool_by_gather", "BatchStatNorm", "make_norm", "init_params", "NORMS", "POOLS"]

NORMS = ("group", "batch", "none")
# How many of Conv4's four blocks end in a 2x2 max-pool (the first ones).
POOLS = (1, 2, 3, 4)


def _inside_vmap() -> bool:
    # Only vmap's batching rule for native batch norm is wrong (functorch#534); other
    # transforms (torch.func.grad in the inner loop) use the native derivative, which is right.
    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


class BatchStatNorm(nn.Module):
    """Batch normalisation from basic tensor ops, always with the current batch's statistics.

    ``nn.BatchNorm2d(track_running_stats=False)`` gives a wrong second-order meta-gradient
    under ``vmap`` (Chapter 3 shows the measurement), so under ``vmap`` this layer computes the
    statistics from basic tensor ops; elsewhere it calls the native kernel, which is exact there.
    Inside Conv4 on a CPU, where a 2x2 pool follows, it runs fused with the pool in the compiled
    kernel of :mod:`mlbook.maxpool` when that kernel applies. It is *transductive*: a query
    example's output depends on the other query examples.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _inside_vmap():
            # Outside vmap the native kernel and its double backward are exact, and a third
            # faster on CPU than the version below (benchmarks/maml_speed.py).
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer named ``norm`` ('group', 'batch' or 'none'; Chapter 3)."""
    check_choice("norm", norm, NORMS)
    if norm == "group":
        # Per-example statistics: no transduction, and exact under vmap.
        return nn.GroupNorm(min(8, channels), channels)
    if norm == "batch":
        return BatchStatNorm(channels)
    return nn.Identity()


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """A fully connected network, 1-40-40-1 by default as in the MAML sinusoid experiments (Chapter 1).

    ``activation`` is 'relu' (the papers') or 'tanh', whose smooth second derivative iMAML's
    implicit gradient relies on (Chapter 3).
    """

    def __init__(self, in_features: int = 1, out_features: int = 1, hidden=(40, 40), activation: str = "relu"):
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        sizes = [in_features, *[check_positive_int("hidden", h) for h in hidden]]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], out_features)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must end in {self.in_features} features, got shape {tuple(x.shape)}")
        return self.head(self.features(x))


class ResidualBlock(nn.Module):
    """conv3x3 -> normalisation, added to its input, then ReLU; keeps the map's shape (Chapter 5).

    He et al. (2016): the skip connection lets a stack of such blocks start out close to the
    identity, so a deeper network trains about as easily as a shallow one.
    """

    def __init__(self, channels: int, norm: str = "group"):
        super().__init__()
        self.conv = nn.Conv2d(check_positive_int("channels", channels), channels, 3, padding=1)
        self.norm = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.norm(self.conv(x)))


class Conv4(nn.Module):
    """The four-block convolutional backbone of MAML, ProtoNet and Matching Networks (Chapters 3-5).

    Each block is conv3x3(``channels``) -> normalisation -> ReLU -> 2x2 max-pool (computed as
    pool, then ReLU: the same function). With ``out_features > 0`` a linear head follows; with
    ``out_features=0`` the module returns the flattened embedding (metric learners). ``pools``
    (1-4) is how many of the four blocks pool, the first ones: at 28 pixels four give a
    64-number embedding per image, three a 3x3 map of 576 numbers at almost the same cost.
    ``space_to_depth`` (f) first folds each f x f patch of pixels into f*f channels, so a
    56-pixel image enters the first block as 28 x 28 x 4: the detail of the larger image at
    almost the cost of the smaller one (the first convolution is the only one that grows).
    ``residual_blocks`` (R) appends R residual blocks (:class:`ResidualBlock`) after the four, at
    the last map's size: a deeper network whose extra layers cost little where the map is small.
    ``feature_blocks`` (k) makes the embedding the maps of the last k blocks stacked along the
    channels (``k * channels`` per place; those blocks must not pool, so their maps share a
    size): each place is then described by features of several depths at once, the finer
    ones of the earlier blocks beside the wider context of the last, as in the hypercolumns of
    Hariharan et al. (2015).
    """

    def __init__(self, out_features: int = 5, in_channels: int = 1, channels: int = 64,
                 norm: str = "group", image_size: int = 28, pools: int = 4, space_to_depth: int = 1,
                 residual_blocks: int = 0, feature_blocks: int = 1):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("channels", channels)
        check_positive_int("image_size", image_size)
        check_choice("pools", pools, POOLS)
        self.space_to_depth = check_positive_int("space_to_depth", space_to_depth)
        if image_size % space_to_depth:
            raise ValueError(f"space_to_depth must divide image_size: {space_to_depth} does not divide "
                             f"{image_size}")
        if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 0:
            raise ValueError(f"out_features must be a non-negative integer, got {out_features!r}")
        if isinstance(residual_blocks, bool) or not isinstance(residual_blocks, int) or residual_blocks < 0:
            raise ValueError(f"residual_blocks must be a non-negative integer, got {residual_blocks!r}")
        blocks = []
        size = image_size // space_to_depth
        folded_channels = in_channels * space_to_depth ** 2
        for i in range(4):
            # ReLU after the pool computes the same function (max and ReLU commute) on a quarter
            # of the values; the parameter names do not change.
            blocks += [nn.Conv2d(folded_channels if i == 0 else channels, channels, 3, padding=1),
                       make_norm(norm, channels)]
            if i < pools:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            blocks.append(nn.ReLU())
        if size == 0:
            folding = f" after space_to_depth {space_to_depth}" if space_to_depth > 1 else ""
            raise ValueError(f"image_size must be at least {2 ** pools * space_to_depth} for {pools} 2x2 "
                             f"poolings{folding}, got {image_size}")
        blocks += [ResidualBlock(channels, norm) for _ in range(residual_blocks)]
        self.feature_blocks = check_positive_int("feature_blocks", feature_blocks)
        same_size = 4 - pools + residual_blocks + 1
        if feature_blocks > same_size:
            raise ValueError(f"feature_blocks={feature_blocks} would stack maps of different sizes: with "
                             f"pools={pools} and residual_blocks={residual_blocks}, the last {same_size} "
                             f"block(s) share the last map's size")
        # Where each stacked block's map is complete in `features`: after its ReLU (or residual
        # block), so at the index of the next layer.
        ends = [i + 1 for i, layer in enumerate(blocks) if isinstance(layer, (nn.ReLU, ResidualBlock))]
        self._stacked_ends = frozenset(ends[-feature_blocks:]) if feature_blocks > 1 else frozenset()
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.embedding_size = feature_blocks * channels * size * size
        self.head = nn.Linear(self.embedding_size, out_features) if out_features else None
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [batch, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if self.space_to_depth > 1:
            # In forward, not a layer of `features`, so the parameter names stay those of Conv4.
            x = F.pixel_unshuffle(x, self.space_to_depth)
        if x.device.type == "cpu" and not _inside_vmap():
            layers = list(self.features)
            i, stacked = 0, []
            while i < len(layers):
                if i in self._stacked_ends:
                    stacked.append(x)
                fused = None
                if (isinstance(layers[i], (BatchStatNorm, nn.GroupNorm)) and i + 1 < len(layers)
                        and isinstance(layers[i + 1], nn.MaxPool2d) and _plain_pool(layers[i + 1])):
                    # Normalisation, pool and ReLU in one kernel: the normalised map is never stored.
                    then_relu = i + 2 < len(layers) and isinstance(layers[i + 2], nn.ReLU)
                    norm = layers[i]
                    fused = (batch_norm_max_pool_2x2(x, norm.weight, norm.bias, norm.eps, relu=then_relu)
                             if isinstance(norm, BatchStatNorm) else
                             group_norm_max_pool_2x2(x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                                     relu=then_relu))
                if fused is not None:
                    x = fused
                    i += 3 if then_relu else 2
                elif isinstance(layers[i], nn.MaxPool2d):
                    then_relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
                    x, relu_done = _max_pool_on_cpu(layers[i], x, then_relu)
                    i += 2 if relu_done else 1
                else:
                    x = layers[i](x)
                    i += 1
            z = x
        elif self._stacked_ends:
            stacked = []
            for i, layer in enumerate(self.features):
                if i in self._stacked_ends:
                    stacked.append(x)
                x = layer(x)
            z = x
        else:
            z = self.features(x)
        if self._stacked_ends:
            z = torch.cat(stacked, dim=1).flatten(1)
        return z if self.head is None else self.head(z)


def _plain_pool(pool: nn.MaxPool2d) -> bool:
    # Conv4's own pools are 2x2 with stride 2: the compiled kernels' case (mlbook.maxpool).
    return (pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0))
            and pool.dilation in (1, (1, 1)) and not pool.ceil_mode and not pool.return_indices)


def _max_pool_on_cpu(pool: nn.MaxPool2d, x: torch.Tensor, then_relu: bool) -> tuple[torch.Tensor, bool]:
    # The compiled kernel also applies the ReLU that follows. Returns the output and whether
    # that ReLU is done.
    pooled = max_pool_2x2(x, relu=then_relu) if _plain_pool(pool) else None
    if pooled is None:
        return max_pool_by_gather(pool, x), False
    return pooled, then_relu


def max_pool_by_gather(pool: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)`` on a CPU, 2-4x faster forward and backward, with the same values and gradients.

    PyTorch's max-pool kernel for the NCHW layout is not vectorised (in a MAML task on Conv4 it
    cost a fifth of the time); its channels-last kernel is. The winners' positions (indices into
    each H x W plane, the first maximum of each window in both kernels) do not depend on the
    layout, so they are found on a channels-last copy and the values gathered from ``x``. The
    gather's backward scatters the gradient to those positions, as max-pool's backward does,
    and its double backward gathers, as max-pool's does: every derivative is the same
    (Chapter 3's gradient checks). Conv4 pools this way where the compiled kernel of
    :mod:`mlbook.maxpool`, faster still, does not apply (no C++ compiler, other dtypes, narrow maps).
    """
    with torch.no_grad():
        _, winners = F.max_pool2d(x.detach().contiguous(memory_format=torch.channels_last),
                                  pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                  ceil_mode=pool.ceil_mode, return_indices=True)
    winners = winners.contiguous()
    return x.flatten(2).gather(2, winners.flatten(2)).view(winners.shape)


def init_params(module: nn.Module, seed: int, dtype=None, device=None) -> dict[str, torch.Tensor]:
    """Fresh parameters for ``module`` from ``seed``, as a dict of leaf tensors (Chapter 1).

    The module's own weights are left untouched: the returned dict is the meta-learner's state.
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        fresh = {}
        clone = _fresh_copy(module)
        for name, tensor in clone.named_parameters():
            t = tensor.detach().clone()
            if dtype is not None:
                t = t.to(dtype)
            if device is not None:
                t = t.to(device)
            fresh[name] = t.requires_grad_(True)
        return fresh
    finally:
        torch.random.set_rng_state(generator_state)


def _fresh_copy(module: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(module)
    for sub in clone.modules():
        if sub is not clone and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return clone
