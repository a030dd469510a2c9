"""Prototypical Networks (Snell et al., 2017): classify by distance to class means (Chapter 5).

    c_n      = 1/K  sum_{(x, y) in D_i^train, y = n}  f_phi(x)          (one prototype per class)
    p(y=n|x) = softmax_n( -d(f_phi(x), c_n) )                            (d: squared Euclidean)
    L_outer  = - mean_{(x, y) in D_i^test}  log p(y|x)

"Adapt" is a forward pass: the task parameters theta_i are the N prototypes. Nothing is
differentiated twice, so a meta-step costs one forward and one backward pass of the backbone.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import query_metrics
from ..models import BatchStatNorm, Conv4
from ..taskmap import call
from ..tasks import Episode
from ..utils import check_choice, check_non_negative_int, check_positive, check_positive_int
from .base import Learner, LearnerConfig, check_labelled_support

__all__ = ["ProtoNet", "prototypes", "squared_distances", "local_similarities", "embedding_for", "DISTANCES",
           "LOCAL_WEIGHTS", "reconstruction_similarities", "MAP_DISTANCES"]

DISTANCES = ("euclidean", "cosine", "local", "reconstruction")
# The distances that compare whole feature maps, descriptor by descriptor, rather than one vector.
MAP_DISTANCES = ("local", "reconstruction")
# The ridge of the reconstruction similarity, chosen by rescoring the stacked recipe's two
# validation runs (trained with best matches) with 0.1, 1 and 3: 0.1 erred least on Balinese
# and on Greek (500 episodes each).
RECONSTRUCTION_RIDGE = 0.1
# How the local similarity averages the best matches: every descriptor alike, or each by the
# square root of its length before normalisation.
LOCAL_WEIGHTS = ("equal", "sqrt-norm")
# The largest table of descriptor products the local similarities build at once without a
# graph; an evaluation batch is split, episode by episode and query rows by query rows, to fit.
# A table far larger (one for a batch of 50 episodes with nine test-time views each is 1.4 GB)
# is mapped fresh from the system at every call, and filling new pages cost as much time as the
# products on a 2-core AMD EPYC.
LOCAL_TABLE_BYTES = 16 * 2**20
# Without a graph to keep, embedding images this many at a time is about twice as fast on a CPU
# as one call over a whole evaluation batch (thousands of images with test-time views), whose
# activations overflow the caches; 16 to 64 measured alike.
EVAL_IMAGES_PER_CALL = 64


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means of ``embeddings [..., S, D]`` with ``labels [..., S]`` in ``0..ways-1`` (Chapter 5).

    Works with or without leading batch axes; returns ``[..., ways, D]``.
    """
    onehot = F.one_hot(labels, ways).to(embeddings.dtype)                 # [..., S, N]
    sums = onehot.transpose(-1, -2) @ embeddings                          # [..., N, D]
    counts = onehot.sum(-2).clamp_min(1.0)[..., None]                     # [..., N, 1]
    return sums / counts


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between rows: ``a [..., M, D]``, ``b [..., N, D]`` -> ``[..., M, N]`` (Chapter 5)."""
    # The expanded form uses one matrix product instead of an [M, N, D] difference tensor.
    return (a.pow(2).sum(-1)[..., :, None] + b.pow(2).sum(-1)[..., None, :]
            - 2 * a @ b.transpose(-1, -2)).clamp_min(0.0)


def local_similarities(query: torch.Tensor, support: torch.Tensor, channels: int,
                       window: int | None = None, weights: str = "equal") -> torch.Tensor:
    """Best-match similarity of feature maps both ways (Chapter 5): ``[..., M, D]``, ``[..., S, D]`` -> ``[..., M, S]``.

    Each embedding is a flattened ``channels x P`` map (``D = channels * P``), read as P local
    descriptors of unit length. Every descriptor of the query is matched with its most similar
    descriptor of the support image (cosine similarity) and the best matches are averaged; the
    same from the support's side; the two means are averaged. The modified Hausdorff distance
    of Dubuisson and Jain (1994), Lake's pixel baseline, matches inked points this way (and keeps
    the larger of the two directed means); DN4 (Li et al., 2019) matches learned descriptors of a
    query with those of a class. A part of a character drawn a little elsewhere still finds its
    match, which two flattened maps compared position by position do not allow. A descriptor
    that is all zeros (nothing drawn near it) matches nothing and adds 0 to either mean.
    With ``window`` = r the map is read as a square and a descriptor may only match one at most
    r cells away in either direction (r = 0: the same position), as the image distortion model of
    Keysers et al. (2007) lets each pixel move within a small neighbourhood: a part may move a
    little but not to the other side of the character. None: anywhere.
    With ``weights='sqrt-norm'`` each descriptor's best match counts in its mean in proportion to
    the square root of the descriptor's length before normalisation, so that the places the network
    describes more strongly count more (strokes, it is hoped, more than blank paper) without one
    place ruling the mean.
    """
    check_choice("weights", weights, LOCAL_WEIGHTS)
    if query.shape[-1] != support.shape[-1] or query.shape[-1] % channels:
        raise ValueError(f"query and support must end in the same multiple of channels={channels}, got "
                         f"{tuple(query.shape)} and {tuple(support.shape)}")

    def descriptors(z):
        return z.unflatten(-1, (channels, -1)).transpose(-1, -2)                   # [..., n, P, C]

    def weights_of(d):
        # The fourth root of the squared length: the square root of the length, with a
        # finite gradient where a descriptor is zero.
        return (d.pow(2).sum(-1) + 1e-12).pow(0.25)                               # [..., n, P]

    q, s = descriptors(query), descriptors(support)
    q_weights, s_weights = (None, None) if weights == "equal" else (weights_of(q), weights_of(s))
    q, s = F.normalize(q, dim=-1), F.normalize(s, dim=-1)
    too_far = None if window is None else _beyond_window(q.shape[-2], window, q.device)

    def block(rows, rows_weights, s, s_weights):
        # One matrix product whose [m*P, S*P] result is read in place as [m, P, S, P]: no copy
        # of the table, the largest tensor here.
        table = (rows.flatten(-3, -2) @ s.flatten(-3, -2).transpose(-1, -2)).unflatten(
            -1, s.shape[-3:-1]).unflatten(-3, rows.shape[-3:-1])                     # [..., m, P, S, P]
        if too_far is not None:
            # Below any cosine similarity, so a match out of reach is never the best one.
            table = table.masked_fill(too_far, -2.0)
        if rows_weights is None:
            return 0.5 * (table.amax(-1).mean(-2) + table.amax(-3).mean(-1))
        from_rows = ((table.amax(-1) * rows_weights[..., None]).sum(-2)
                     / rows_weights.sum(-1)[..., None])                                # [..., m, S]
        from_support = ((table.amax(-3) * s_weights[..., None, :, :]).sum(-1)
                        / s_weights.sum(-1)[..., None, :])                             # [..., m, S]
        return 0.5 * (from_rows + from_support)
    return _in_blocks(block, (q, q_weights), (s, s_weights))


def reconstruction_similarities(query: torch.Tensor, support: torch.Tensor, channels: int,
                                ridge: float = RECONSTRUCTION_RIDGE) -> torch.Tensor:
    """How well each image's local descriptors rebuild the other's (Chapter 5): ``[..., M, D]``, ``[..., S, D]`` -> ``[..., M, S]``.

    The maps are read as in :func:`local_similarities` (P descriptors of unit length). Every
    descriptor of the query is rebuilt as the ridge-regression combination of the support image's
    descriptors, and the similarity is minus the mean squared error of the rebuilt descriptors;
    the same from the support's side; the two are averaged. Feature map reconstruction networks
    (Wertheimer, Tang and Hariharan, 2021) score a query by how well a class's descriptors rebuild
    it. Where a best match lets each descriptor find one partner, a combination of all the other
    image's descriptors must account for the whole descriptor. The similarity lies in [-1, 0]:
    0 when every descriptor lies in the span of the other image's. ``ridge`` (lambda) keeps the
    combination small: a larger one rebuilds less, and the error tells less apart. On Lake's
    minimal Omniglot it did no better than the best matches (Chapter 5, "Rebuilding instead of
    matching").
    """
    ridge = check_positive("ridge", ridge)
    if query.shape[-1] != support.shape[-1] or query.shape[-1] % channels:
        raise ValueError(f"query and support must end in the same multiple of channels={channels}, got "
                         f"{tuple(query.shape)} and {tuple(support.shape)}")

    def descriptors(z):
        return F.normalize(z.unflatten(-1, (channels, -1)).transpose(-1, -2), dim=-1)  # [..., n, P, C]

    # With c = t S^T a target descriptor's products with a pool image's descriptors S, G = S S^T
    # and K = (G + ridge I)^-1, the rebuilt descriptor is c K S and its squared error
    # |t|^2 - c (2K - K G K) c^T: no rebuilt descriptor is ever formed. The P x P algebra runs in
    # float32 (at least) even under bfloat16 autocast, since the error is a small difference of
    # numbers near 1.
    wide = torch.promote_types(query.dtype, torch.float32)

    def quadratic_form(pool):
        # 2K - K G K for each image of pool [..., n, P, C] -> [..., n, P, P].
        with torch.autocast(device_type=pool.device.type, enabled=False):
            pool_wide = pool.to(wide)
            gram = pool_wide @ pool_wide.transpose(-1, -2)
            eye = torch.eye(gram.shape[-1], dtype=wide, device=gram.device)
            inverse = torch.linalg.solve(gram + ridge * eye, eye)
            return 2 * inverse - inverse @ gram @ inverse

    def rebuilt_error(targets, pool, form):
        # targets [..., m, P, C] rebuilt from each image of pool [..., n, P, C] -> [..., m, n].
        products = (targets.flatten(-3, -2) @ pool.flatten(-3, -2).transpose(-1, -2)).unflatten(
            -1, pool.shape[-3:-1]).to(wide)                                        # [..., m*P, n, P]
        with torch.autocast(device_type=pool.device.type, enabled=False):
            explained = (torch.einsum("...anq,...nqr->...anr", products, form) * products).sum(-1)
            lengths = targets.to(wide).pow(2).sum(-1).flatten(-2)                  # [..., m*P]
            error = (lengths[..., None] - explained).unflatten(-2, targets.shape[-3:-1])  # [..., m, P, n]
        return -error.mean(-2)

    q, s = descriptors(query), descriptors(support)
    # The support images' forms serve every block of query rows.
    support_form = quadratic_form(s)

    def block(rows, s, support_form):
        return 0.5 * (rebuilt_error(rows, s, support_form)
                      + rebuilt_error(s, rows, quadratic_form(rows)).transpose(-1, -2))
    return _in_blocks(block, (q,), (s, support_form))


def _in_blocks(block, query_parts, support_parts):
    """``block(*query_parts, *support_parts)`` -> ``[..., M, S]``, without a graph computed
    episode by episode and a few query rows at a time, so that no table of descriptor products
    exceeds LOCAL_TABLE_BYTES; with a graph, in one call.

    The first query part is ``[..., M, P, C]`` and the first support part ``[..., S, P, C]``;
    every part shares their leading dimensions (or is None) and holds one row per query or
    support image after them.
    """
    queries, support = query_parts[0], support_parts[0]
    if torch.is_grad_enabled():
        return block(*query_parts, *support_parts)
    lead = torch.broadcast_shapes(queries.shape[:-3], support.shape[:-3])
    rows, places = queries.shape[-3], queries.shape[-2]
    row_bytes = places * support.shape[-3] * places * max(queries.element_size(), 4)
    per_call = max(1, LOCAL_TABLE_BYTES // row_bytes)
    if lead.numel() * rows <= per_call:  # the whole batch's table fits: one call
        return block(*query_parts, *support_parts)

    def by_episode(part, core):
        # [..., n, ...] -> [episodes, n, ...], the leading dimensions broadcast and flattened.
        return None if part is None else part.expand(*lead, *part.shape[part.dim() - core:]).reshape(
            -1, *part.shape[part.dim() - core:])

    # How many dimensions each part has after the leading ones: the rows and what each row holds.
    query_cores = [None if p is None else p.dim() - queries.dim() + 3 for p in query_parts]
    support_cores = [None if p is None else p.dim() - support.dim() + 3 for p in support_parts]
    query_parts = [by_episode(p, c) for p, c in zip(query_parts, query_cores)]
    support_parts = [by_episode(p, c) for p, c in zip(support_parts, support_cores)]
    episodes = []
    for e in range(query_parts[0].shape[0]):
        pool = [None if p is None else p[e] for p in support_parts]
        episodes.append(torch.cat([
            block(*[None if p is None else p[e, start:start + per_call] for p in query_parts], *pool)
            for start in range(0, rows, per_call)], dim=-2))
    return torch.stack(episodes).reshape(*lead, rows, -1)


def _check_local_weights(local_weights: str, distance: str) -> None:
    check_choice("local_weights", local_weights, LOCAL_WEIGHTS)
    if local_weights != "equal" and distance != "local":
        raise ValueError(f"local_weights applies to distance='local' only, got distance={distance!r}")


def _beyond_window(positions: int, window: int, device) -> torch.Tensor:
    """``[P, 1, P]`` mask of position pairs of a square map more than ``window`` cells apart."""
    window = check_non_negative_int("window", window)
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"window needs a square feature map; got {positions} positions")
    cells = torch.arange(side, device=device)
    rows, cols = cells.repeat_interleave(side), cells.repeat(side)
    apart = torch.maximum((rows[:, None] - rows).abs(), (cols[:, None] - cols).abs())
    return (apart > window)[:, None, :]


def embedding_for(config: LearnerConfig) -> nn.Module:
    """The Conv4 embedding network (no output layer) of a metric learner (Chapter 5)."""
    return Conv4(out_features=0, channels=config.channels, norm=config.norm, image_size=config.image_size,
                 pools=config.pools, space_to_depth=config.space_to_depth,
                 residual_blocks=config.residual_blocks, feature_blocks=config.feature_blocks)


class ProtoNet(Learner):
    """Prototypical Networks behind the one learner interface (Chapter 5).

    ``model`` maps images to embeddings (default: ``Conv4(out_features=0)``, 64 channels,
    GroupNorm). ``distance`` is 'euclidean' (squared, as in the paper), 'cosine', 'local'
    (:func:`local_similarities` of the model's feature maps, which have ``channels`` channels;
    a class scores the mean over its shots, so a task keeps every support embedding instead of
    prototypes) or 'reconstruction' (:func:`reconstruction_similarities` of the same maps, kept
    the same way). ``scale`` multiplies the negative distances (or the similarities) before the
    softmax (a temperature). With ``learn_scale`` the temperature is meta-learned (its logarithm
    is ``state["log_scale"]``), which cosine and local similarities need: bounded in [-1, 1],
    they cannot make confident logits alone, nor can the reconstruction similarity in [-1, 0].
    ``meta_loss`` embeds every image of a meta-batch in one backbone call, which is exact here
    because GroupNorm (or no normalisation) treats each image on its own.
    """

    name = "ProtoNet"
    kind = "metric"
    tasks = frozenset({"classification"})
    options = ("distance", "local_window", "local_weights", "fixed_scale")
    any_ways = True

    def __init__(self, model: nn.Module | None = None, distance: str = "euclidean", scale: float = 1.0,
                 learn_scale: bool = False, channels: int | None = None, local_window: int | None = None,
                 local_weights: str = "equal", strategy: str = "auto", chunk_size: int | None = None):
        super().__init__(loss="cross_entropy", strategy=strategy, chunk_size=chunk_size)
        self.model = Conv4(out_features=0) if model is None else model
        if not isinstance(self.model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.distance = check_choice("distance", distance, DISTANCES)
        self.scale = check_positive("scale", scale)
        self.learn_scale = bool(learn_scale)
        if self.distance in MAP_DISTANCES:
            if channels is None:
                raise ValueError(f"channels (the feature map's channels) is required with distance={distance!r}")
            channels = check_positive_int("channels", channels)
        if local_window is not None:
            if self.distance != "local":
                raise ValueError(f"local_window applies to distance='local' only, got distance={distance!r}")
            local_window = check_non_negative_int("local_window", local_window)
        _check_local_weights(local_weights, self.distance)
        self.channels = channels
        self.local_window = local_window
        self.local_weights = local_weights
        # Batch statistics tie each image's embedding to the others in its call, so such a model
        # must see an evaluation batch whole.
        self._embeds_each_image_alone = not any(isinstance(m, (BatchStatNorm, nn.modules.batchnorm._BatchNorm))
                                                for m in self.model.modules())

    @classmethod
    def from_config(cls, config: LearnerConfig) -> "ProtoNet":
        """A Conv4 embedding (no output layer) and the configured distance (Chapter 5).

        Cosine similarity gets a learned temperature starting at 10, as in the cosine
        classifiers of Gidaris and Komodakis (2018) and Chen et al. (2019), and so does the
        local and reconstruction similarities; a ``fixed_scale`` holds the temperature at that
        number instead.
        """
        if config.fixed_scale is not None and config.distance == "euclidean":
            raise ValueError("fixed_scale applies to distance='cosine', 'local' or 'reconstruction' only, "
                             "got distance='euclidean'")
        scale = dict(scale=10.0, learn_scale=True) if config.fixed_scale is None else dict(
            scale=config.fixed_scale, learn_scale=False)
        if config.distance == "cosine":
            return cls(embedding_for(config), distance="cosine", **scale)
        if config.distance == "reconstruction":
            return cls(embedding_for(config), distance="reconstruction",
                       channels=config.channels * config.feature_blocks, **scale)
        if config.distance == "local":
            # Stacked maps describe each place by feature_blocks * channels numbers.
            return cls(embedding_for(config), distance="local", channels=config.channels * config.feature_blocks,
                       local_window=config.local_window, local_weights=config.local_weights, **scale)
        return cls(embedding_for(config), distance=config.distance)

    def with_local_weights(self, local_weights: str) -> "ProtoNet":
        """The same learner, sharing its embedding, with its best matches weighed another way (Chapter 5).

        Rescores a trained network without retraining it: what weighing the matches would change
        is measured on the same state and the same episodes.
        """
        if self.distance != "local":
            raise ValueError(f"local_weights applies to distance='local' only, got distance={self.distance!r}")
        _check_local_weights(local_weights, self.distance)
        rescored = copy.copy(self)
        rescored.local_weights = local_weights
        return rescored

    def init(self, seed: int, *, dtype=None, device=None) -> dict:
        """phi: fresh embedding weights (and the log-temperature when it is learned)."""
        state = super().init(seed, dtype=dtype, device=device)
        if self.learn_scale:
            like = next(iter(state["params"].values()))
            state["log_scale"] = torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=True)
        return state

    def _temperature(self, state):
        # The learned factor multiplies the initial scale, so log_scale starts at zero.
        log_scale = state.get("log_scale")
        return self.scale if log_scale is None else self.scale * log_scale.exp()

    def embed(self, state, x: torch.Tensor) -> torch.Tensor:
        """f_phi(x) for images with any number of leading axes: ``[..., C, H, W]`` -> ``[..., D]``."""
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        if torch.is_grad_enabled() or not self._embeds_each_image_alone or flat.shape[0] <= EVAL_IMAGES_PER_CALL:
            z = call(self.model, state["params"], flat)
        else:
            z = torch.cat([call(self.model, state["params"], part) for part in flat.split(EVAL_IMAGES_PER_CALL)])
        return z.reshape(*lead, z.shape[-1])

    def _summary(self, support: torch.Tensor, support_y: torch.Tensor, ways: int) -> dict:
        # What a task keeps of its support set: the prototypes, or for the local similarity, which
        # compares whole maps, every support embedding and each image's weight in its class mean.
        if self.distance in MAP_DISTANCES:
            onehot = F.one_hot(support_y, ways).to(support.dtype)                 # [..., S, N]
            return {"support": support, "class_weights": onehot / onehot.sum(-2, keepdim=True).clamp_min(1.0)}
        return {"prototypes": prototypes(support, support_y, ways)}

    def _logits(self, state, query: torch.Tensor, summary: dict) -> torch.Tensor:
        scale = self._temperature(state)
        if self.distance in MAP_DISTANCES:
            # Each support image is matched on its own; a class scores the mean over its shots.
            if self.distance == "local":
                per_image = local_similarities(query, summary["support"], self.channels,
                                               self.local_window, self.local_weights)  # [..., M, S]
            else:
                per_image = reconstruction_similarities(query, summary["support"], self.channels)
            return scale * per_image @ summary["class_weights"]
        protos = summary["prototypes"]
        if self.distance == "cosine":
            return scale * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).transpose(-1, -2)
        return -scale * squared_distances(query, protos)

    def adapt(self, state, support_x, support_y):
        """theta_i = the N class prototypes of one task's support set (local: the support maps)."""
        check_labelled_support(support_x, support_y)
        ways = int(support_y.max().item()) + 1
        task_state = {"params": state["params"], **self._summary(self.embed(state, support_x), support_y, ways)}
        if "log_scale" in state:
            task_state["log_scale"] = state["log_scale"]
        return task_state

    def predict(self, task_state, x):
        """Logits: negative (scaled) distances from f_phi(x) to each prototype (local: similarities)."""
        return self._logits(task_state, self.embed(task_state, x), task_state)

    def episode_logits(self, state, episode: Episode) -> torch.Tensor:
        """Query logits ``[B, N*Q, N]`` for every task of ``episode`` from one backbone call."""
        ways = int(episode.support_y.max().item()) + 1
        sx, qx = episode.support_x, episode.query_x
        z = self.embed(state, torch.cat([sx, qx], dim=1))                 # [B, S+Q, D]
        support, query = z[:, :sx.shape[1]], z[:, sx.shape[1]:]
        return self._logits(state, query, self._summary(support, episode.support_y, ways))

    def episode_metrics(self, state, episode: Episode) -> dict[str, torch.Tensor]:
        """Per-task prototypical loss and accuracy of a meta-batch, from one backbone call."""
        return query_metrics(self.episode_logits(state, episode), episode.query_y, classification=True)

    def __repr__(self) -> str:
        learned = ", learned" if self.learn_scale else ""
        window = "" if self.local_window is None else f", local_window={self.local_window}"
        weights = "" if self.local_weights == "equal" else f", local_weights={self.local_weights!r}"
        return f"ProtoNet(distance={self.distance!r}{window}{weights}, scale={self.scale}{learned})"
