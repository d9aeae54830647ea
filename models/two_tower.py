"""Two-tower retrieval model in PyTorch (pure compute: arrays and frames in, arrays out).

Item tower: an id embedding plus the item's category, its tags (mean of tag embeddings)
and, when given, a projection of its text embedding, through a residual MLP. During
training the id embedding of each item is dropped with probability ``id_dropout`` so the
features alone must place the item; an item never seen in training (no id embedding) gets
its vector from its features.

User tower: the mean of the user's most recent ``history_len`` items (a history
embedding table keyed by item id), the user's activity counts (log of all and of recent
interactions) and country, through a residual MLP. Request context (device, time of day)
is not a feature: the events carry none. Each training example is one (user, positive
item) pair whose history leaves that item out, so the tower cannot find the answer in its
input; a user with no known history still gets a vector from activity and country.

Loss: sampled softmax over cosine similarities divided by ``temperature``. The negatives
of each pair are the other positives of its batch plus ``uniform_negatives`` items drawn
uniformly from the catalog (mixed negative sampling). The popularity (logQ) correction
subtracts ``logq`` times the log of each candidate's expected count among the candidates
(``B * q(i) + M / N``, ``q(i)`` the item's share of the training pairs) from its logit
(Yi et al., RecSys 2019; Yang et al., WWW 2020 for the mixed form). Other positives of
the same user and repeats of the positive item are masked out as negatives.

Vectors are L2-normalised, so the inner product of a user and an item vector is their
cosine: any FAISS inner-product index (models/index.py) serves them. Every random step
is seeded (torch and numpy generators derived from ``seed``) and the data order is fixed,
so two trainings with the same config and thread count give identical vectors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("recs.two_tower")

FORMAT_VERSION = 1
PAD = 0
"""Index 0 of every vocabulary: padding, unknown value, unknown item id."""
RECENT_DAYS = 30
"""Window of the 'recent activity' count, before the newest interaction in the data."""


class TwoTowerError(ValueError):
    """Bad configuration or inconsistent inputs; the message names the field."""


@dataclass(frozen=True)
class TwoTowerConfig:
    """Hyper-parameters of the two-tower model; validated on creation.

    ``logq`` scales the logQ correction (1 is the textbook correction; above 1 it also
    pulls the model further towards popular items). ``uniform_negatives`` adds that many
    uniformly drawn catalog items to each batch's negatives (mixed negative sampling).
    """

    dim: int = 128
    hidden: int = 256
    history_len: int = 200
    epochs: int = 12
    # The training budget: at most this many steps per fit (0: no cap). The epochs'
    # steps grow with the data; past the budget the fit stops within its last epoch, so
    # a day's training costs the same at any data size. The default leaves every dataset
    # of the benchmarks (MovieLens small: about 1,200 steps) at its full 12 epochs.
    max_steps: int = 4000
    batch_size: int = 1024
    lr: float = 0.006
    temperature: float = 0.05
    id_dropout: float = 0.3
    weight_decay: float = 1e-6
    logq: float = 1.6
    uniform_negatives: int = 1024
    max_tags: int = 10
    country_dim: int = 8
    seed: int = 42
    threads: int = 1

    def __post_init__(self) -> None:
        ints = {"dim": 1, "hidden": 1, "history_len": 1, "epochs": 1, "max_steps": 0,
                "batch_size": 2, "uniform_negatives": 0, "max_tags": 1, "country_dim": 1,
                "seed": 0, "threads": 1}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise TwoTowerError(f"TwoTowerConfig.{name}={v!r}: expected an integer")
            if v < lo:
                raise TwoTowerError(f"TwoTowerConfig.{name}={v}: must be at least {lo}")
        for name in ("lr", "temperature", "id_dropout", "weight_decay", "logq"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise TwoTowerError(f"TwoTowerConfig.{name}={v!r}: expected a finite number")
        for name in ("lr", "temperature"):
            if getattr(self, name) <= 0:
                raise TwoTowerError(f"TwoTowerConfig.{name}={getattr(self, name)}: must be > 0")
        for name in ("weight_decay", "logq"):
            if getattr(self, name) < 0:
                raise TwoTowerError(f"TwoTowerConfig.{name}={getattr(self, name)}: "
                                    "must be >= 0")
        if not 0.0 <= self.id_dropout < 1.0:
            raise TwoTowerError(f"TwoTowerConfig.id_dropout={self.id_dropout}: "
                                "must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TwoTowerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TwoTowerError(f"TwoTowerConfig: unknown field(s) {unknown}")
        return cls(**d)

    def digest(self) -> str:
        """sha256 of the configuration (hex)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


# --- Features --------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocab:
    """Category, tag and country vocabularies; index i+1 is the i-th value, 0 unknown."""

    categories: tuple[str, ...]
    tags: tuple[str, ...]
    countries: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"categories": list(self.categories), "tags": list(self.tags),
                "countries": list(self.countries)}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(tuple(d["categories"]), tuple(d["tags"]), tuple(d.get("countries", ())))

    @staticmethod
    def _lookup(values: tuple[str, ...], keys: Iterable) -> np.ndarray:
        pos = {v: i + 1 for i, v in enumerate(values)}
        return np.array([pos.get(k, PAD) if isinstance(k, str) else PAD for k in keys],
                        dtype="int64")

    def category_index(self, categories: Iterable) -> np.ndarray:
        return self._lookup(self.categories, categories)

    def country_index(self, countries: Iterable) -> np.ndarray:
        return self._lookup(self.countries, countries)

    def tag_matrix(self, tags: Iterable, max_tags: int) -> np.ndarray:
        """``(n, max_tags)`` tag indices per item (known tags, first ones kept), 0-padded."""
        pos = {v: i + 1 for i, v in enumerate(self.tags)}
        rows = list(tags)
        out = np.zeros((len(rows), max_tags), dtype="int64")
        for r, item_tags in enumerate(rows):
            known = [pos[t] for t in _as_list(item_tags) if t in pos][:max_tags]
            out[r, :len(known)] = known
        return out


def _as_list(tags) -> list:
    if tags is None or (isinstance(tags, float) and math.isnan(tags)):
        return []
    return list(tags)


def build_vocab(items: pd.DataFrame, countries: Iterable | None = None,
                min_tag_items: int = 2) -> Vocab:
    """Vocabularies from an items frame (category, tags) and optional country codes.

    A tag must be on at least ``min_tag_items`` items: a tag on one item only says what
    its id already says. Values are sorted, so equal inputs give equal vocabularies.
    """
    cats = sorted({c for c in items["category"] if isinstance(c, str) and c})
    counts: dict[str, int] = {}
    for tags in items["tags"]:
        for t in set(_as_list(tags)):
            if isinstance(t, str) and t:
                counts[t] = counts.get(t, 0) + 1
    tags = sorted(t for t, n in counts.items() if n >= min_tag_items)
    ctry = sorted({c for c in (countries if countries is not None else [])
                   if isinstance(c, str) and c})
    return Vocab(tuple(cats), tuple(tags), tuple(ctry))


@dataclass(frozen=True)
class ItemFeatures:
    """Item-side inputs, one row per item.

    ``category`` (n,) and ``tags`` (n, max_tags) hold vocabulary indices (0 = unknown or
    padding); ``text`` is an optional ``(n, text_dim)`` float32 text embedding.
    """

    item_ids: np.ndarray
    category: np.ndarray
    tags: np.ndarray
    text: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if len(np.unique(self.item_ids)) != n:
            raise TwoTowerError("ItemFeatures.item_ids: duplicate item ids")
        if self.category.shape != (n,):
            raise TwoTowerError(f"ItemFeatures.category: shape {self.category.shape}, "
                                f"expected ({n},)")
        if self.tags.ndim != 2 or len(self.tags) != n:
            raise TwoTowerError(f"ItemFeatures.tags: shape {self.tags.shape}, expected ({n}, T)")
        if self.text is not None and (self.text.ndim != 2 or len(self.text) != n):
            raise TwoTowerError(f"ItemFeatures.text: shape {self.text.shape}, "
                                f"expected ({n}, D)")

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_frame(cls, items: pd.DataFrame, vocab: Vocab, text: np.ndarray | None = None,
                   max_tags: int = 24) -> ItemFeatures:
        """From a frame with item_id, category, tags (a list per item); ``text`` row-aligned."""
        return cls(items["item_id"].to_numpy(dtype="int64"),
                   vocab.category_index(items["category"]),
                   vocab.tag_matrix(items["tags"], max_tags),
                   None if text is None else np.ascontiguousarray(text, dtype="float32"))


@dataclass(frozen=True)
class UserFeatures:
    """User-side inputs, one row per user.

    ``history`` (n, history_len): item ids, newest first; only the first
    ``history_count[u]`` entries of a row are used. ``activity`` (n, 2): log1p of the
    number of interactions and of those in the last :data:`RECENT_DAYS` days before the
    newest interaction of the data. ``country`` (n,): vocabulary index, 0 = unknown.
    """

    user_ids: np.ndarray
    history: np.ndarray
    history_count: np.ndarray
    activity: np.ndarray
    country: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        for name, arr in (("history", self.history), ("history_count", self.history_count),
                          ("activity", self.activity), ("country", self.country)):
            if len(arr) != n:
                raise TwoTowerError(f"UserFeatures.{name}: {len(arr)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def from_pairs(cls, pairs: pd.DataFrame, history_len: int, *,
                   countries: pd.Series | None = None, vocab: Vocab | None = None,
                   reference: pd.Timestamp | None = None) -> UserFeatures:
        """From (user_id, item_id, timestamp) pairs; ``countries`` is indexed by user id.

        ``reference`` is the end of the 'recent' window (default: the newest timestamp in
        ``pairs``; never the clock).
        """
        for col in ("user_id", "item_id", "timestamp"):
            if col not in pairs.columns:
                raise TwoTowerError(f"pairs: missing column {col!r}")
        ts = pd.to_datetime(pairs["timestamp"], utc=True)
        if ts.isna().any():
            raise TwoTowerError(f"pairs: timestamp missing in {int(ts.isna().sum())} row(s)")
        ref = ts.max() if reference is None else pd.Timestamp(reference)
        recent_all = (ts > ref - pd.Timedelta(days=RECENT_DAYS)).to_numpy()
        # By user, newest first, then item id: sorted keys and one permutation (not a sorted
        # copy of the frame), so the temporaries stay a few arrays of one column each.
        order = np.lexsort((pairs["item_id"].to_numpy(dtype="int64"), -ts.array.asi8,
                            pairs["user_id"].to_numpy(dtype="int64")))
        del ts
        recent = recent_all[order]
        del recent_all
        users, start, count = np.unique(pairs["user_id"].to_numpy(dtype="int64")[order],
                                        return_index=True, return_counts=True)
        items = pairs["item_id"].to_numpy(dtype="int64")[order]
        del order
        n_recent = np.add.reduceat(recent.astype("int64"), start) if len(start) else start
        rank = np.arange(len(items)) - np.repeat(start, count)
        keep = rank < history_len
        history = np.zeros((len(users), history_len), dtype="int64")
        history[np.repeat(np.arange(len(users)), count)[keep], rank[keep]] = items[keep]
        activity = np.stack([np.log1p(count), np.log1p(n_recent)], axis=1).astype("float32")
        if countries is not None and vocab is not None:
            country = vocab.country_index(countries.reindex(users).to_numpy())
        else:
            country = np.zeros(len(users), dtype="int64")
        return cls(users.astype("int64"), history, np.minimum(count, history_len),
                   activity, country)


# --- Loss --------------------------------------------------------------------------------


def sampling_log_probs(item_index: np.ndarray, n_items: int) -> np.ndarray:
    """log q(i): log of each item's share of the training pairs (0 pairs -> share 1/N)."""
    counts = np.bincount(np.asarray(item_index, dtype="int64"), minlength=n_items)
    counts = np.maximum(counts.astype("float64"), 1.0)
    return np.log(counts / len(item_index)).astype("float32")


def in_batch_logits(user_vecs, item_vecs, log_q, temperature: float,
                    same_item=None, same_user=None):
    """Logits of the in-batch sampled softmax: row b scores every candidate item.

    The B users' positives are the first B of the C candidates (row b's positive is
    column b); any further candidates are extra sampled negatives. The logits are
    ``user_vecs @ item_vecs.T / temperature - log_q[None, :]``: ``log_q`` is
    the log of how often each candidate is expected among the candidates (the logQ
    correction; ``None`` for none). Entries where ``same_item`` or ``same_user``
    (boolean (B, C)) is set, the positive itself excepted, are masked to -inf.
    """
    import torch

    logits = user_vecs @ item_vecs.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    mask = None
    for m in (same_item, same_user):
        if m is not None:
            mask = m if mask is None else (mask | m)
    if mask is not None:
        eye = torch.eye(*logits.shape, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(mask & ~eye, float("-inf"))
    return logits


def in_batch_loss(logits):
    """Mean cross-entropy of each row against its own positive (row b: column b)."""
    import torch

    target = torch.arange(len(logits), device=logits.device)
    return torch.nn.functional.cross_entropy(logits, target)


# --- Network -------------------------------------------------------------------------------


def _net_class():
    import torch
    from torch import nn

    class ResidualMLP(nn.Module):
        def __init__(self, d_in: int, hidden: int, d_out: int):
            super().__init__()
            self.skip = nn.Linear(d_in, d_out, bias=False) if d_in != d_out else nn.Identity()
            self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(),
                                      nn.Linear(hidden, d_out))

        def forward(self, x):
            return self.skip(x) + self.body(x)

    class TwoTowerNet(nn.Module):
        def __init__(self, cfg: TwoTowerConfig, n_ids: int, n_categories: int, n_tags: int,
                     n_countries: int, text_dim: int):
            super().__init__()
            d = cfg.dim
            self.register_buffer("known_ids", torch.zeros(n_ids, dtype=torch.int64))
            # The tables that grow with the catalog have sparse gradients: a step updates
            # the rows its batch touched, not every row (see :func:`train`).
            self.item_id = nn.Embedding(n_ids + 1, d, padding_idx=PAD, sparse=True)
            self.category = nn.Embedding(n_categories + 1, d, padding_idx=PAD)
            self.tags = nn.EmbeddingBag(n_tags + 1, d, mode="mean", padding_idx=PAD,
                                        sparse=True)
            self.text = nn.Linear(text_dim, d, bias=False) if text_dim else None
            self.item_mlp = ResidualMLP(d, cfg.hidden, d)
            self.history = nn.EmbeddingBag(n_ids + 1, d, mode="sum", padding_idx=PAD,
                                           sparse=True)
            self.country = nn.Embedding(n_countries + 1, cfg.country_dim, padding_idx=PAD)
            self.user_mlp = ResidualMLP(d + 2 + cfg.country_dim, cfg.hidden, d)
            for emb in (self.item_id, self.category, self.tags, self.history, self.country):
                nn.init.normal_(emb.weight, std=0.1)
                with torch.no_grad():
                    emb.weight[PAD].zero_()

        def item_forward(self, ids, category, tags, text, keep_id=None):
            """Unit item vectors; ``keep_id`` (0/1 per item) drops id embeddings."""
            x = self.category(category) + self.tags(tags)
            id_vec = self.item_id(ids)
            if keep_id is not None:
                id_vec = id_vec * keep_id[:, None]
            x = x + id_vec
            if self.text is not None:
                x = x + self.text(text)
            return nn.functional.normalize(self.item_mlp(x), dim=1)

        def pool_history(self, history):
            """Mean history embedding of ``(n, L)`` id indices (padding ignored)."""
            count = (history != PAD).sum(dim=1).float()
            return _ratio(self.history(history), count)

        def user_forward(self, pooled, activity, country):
            z = torch.cat([pooled, activity, self.country(country)], dim=1)
            return nn.functional.normalize(self.user_mlp(z), dim=1)

        def sparse_parameters(self) -> list:
            """The catalog-sized tables, whose gradients are sparse."""
            return [self.item_id.weight, self.tags.weight, self.history.weight]

    return TwoTowerNet


def _optimizers(net, cfg: TwoTowerConfig, total_steps: int) -> list:
    """(optimizer, schedule) pairs: lazy Adam (``SparseAdam``) on the catalog-sized
    embedding tables, AdamW on the rest, both with the learning rate decaying linearly to
    0. A step then costs the same whatever the catalog's size: dense Adam would update
    every row of the id tables (moments and weights) at every step. The embedding tables
    get no weight decay (SparseAdam has none; the default decay, 1e-6, is negligible)."""
    import torch

    sparse = net.sparse_parameters()
    ids = {id(p) for p in sparse}
    dense = [p for p in net.parameters() if id(p) not in ids]
    opts = [torch.optim.SparseAdam(sparse, lr=cfg.lr),
            torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    return [(o, torch.optim.lr_scheduler.LambdaLR(
        o, lambda i: max(0.0, 1.0 - i / total_steps))) for o in opts]


def _ratio(sums, weight):
    """``sums / weight`` row-wise; 0 where the weight is 0 (an empty history)."""
    import torch

    ok = weight > 1e-6
    return torch.where(ok[..., None], sums / torch.where(ok, weight, 1.0)[..., None], 0.0)


def _id_index(known_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position + 1 of each id in the sorted ``known_ids``; 0 where the id is unknown."""
    ids = np.asarray(ids, dtype="int64")
    if len(known_ids) == 0:
        return np.zeros(ids.shape, dtype="int64")
    pos = np.searchsorted(known_ids, ids)
    pos_c = np.minimum(pos, len(known_ids) - 1)
    return np.where(known_ids[pos_c] == ids, pos_c + 1, PAD).astype("int64")


def _history_index(known_ids: np.ndarray, users: UserFeatures,
                   rows: slice = slice(None)) -> np.ndarray:
    """History item ids -> id indices; entries past each user's count -> padding. For the
    users of ``rows`` only: callers go by chunks of users, so that the (users x
    history_len) temporaries stay the size of a chunk."""
    history, count = users.history[rows], users.history_count[rows]
    idx = _id_index(known_ids, history)
    cols = np.arange(history.shape[1])[None, :]
    return np.where(cols < count[:, None], idx, PAD)


@contextlib.contextmanager
def _torch_scope(threads: int, seed: int | None = None) -> Iterator[None]:
    """Limit torch's threads inside the block, then restore them. With a ``seed``, also
    seed torch's global RNG (restored afterwards) and use deterministic algorithms only:
    with more than one thread, some CPU reductions (the embedding-bag backward) otherwise
    add in a varying order."""
    import torch

    before = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    try:
        if seed is None:
            yield
        else:
            torch.use_deterministic_algorithms(True)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yield
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(was_deterministic)


# --- Model -----------------------------------------------------------------------------


class TwoTowerModel:
    """A trained two-tower model: vectors for any items and users, save and load."""

    def __init__(self, config: TwoTowerConfig, vocab: Vocab, known_ids: np.ndarray,
                 text_dim: int, net=None, training_log: list[dict] | None = None):
        self.config = config
        self.vocab = vocab
        self.known_ids = np.asarray(known_ids, dtype="int64")
        self.text_dim = int(text_dim)
        self.training_log = training_log or []
        if net is None:
            import torch

            net = _net_class()(config, len(self.known_ids), len(vocab.categories),
                               len(vocab.tags), len(vocab.countries), self.text_dim)
            net.known_ids.copy_(torch.from_numpy(self.known_ids))
        self.net = net

    def _check_items(self, items: ItemFeatures) -> None:
        if self.text_dim and items.text is None:
            raise TwoTowerError(f"ItemFeatures.text: the model was trained with {self.text_dim}"
                                "-dim text embeddings; none given")
        if self.text_dim and items.text.shape[1] != self.text_dim:
            raise TwoTowerError(f"ItemFeatures.text: {items.text.shape[1]} columns, the model "
                                f"expects {self.text_dim}")

    def item_vectors(self, items: ItemFeatures, batch: int = 8192) -> np.ndarray:
        """``(n_items, dim)`` unit vectors; an id unknown to the model uses features only."""
        import torch

        self._check_items(items)
        ids = _id_index(self.known_ids, items.item_ids)
        # Indices outside the model's vocabularies count as unknown.
        category = np.where(items.category <= len(self.vocab.categories), items.category, PAD)
        tags = np.where(items.tags <= len(self.vocab.tags), items.tags, PAD)
        out = np.zeros((len(items), self.config.dim), dtype="float32")
        self.net.eval()
        with _torch_scope(self.config.threads), torch.no_grad():
            for s in range(0, len(items), batch):
                sl = slice(s, s + batch)
                text = None if not self.text_dim else torch.from_numpy(items.text[sl])
                out[sl] = self.net.item_forward(
                    torch.from_numpy(ids[sl]), torch.from_numpy(category[sl]),
                    torch.from_numpy(tags[sl]), text).numpy()
        return out

    def user_vectors(self, users: UserFeatures, batch: int = 8192) -> np.ndarray:
        """``(n_users, dim)`` unit vectors from each user's history, activity and country."""
        import torch

        country = np.where(users.country <= len(self.vocab.countries), users.country, PAD)
        out = np.zeros((len(users), self.config.dim), dtype="float32")
        self.net.eval()
        with _torch_scope(self.config.threads), torch.no_grad():
            for s in range(0, len(users), batch):
                sl = slice(s, s + batch)
                hist = _history_index(self.known_ids, users, sl)
                out[sl] = self.net.user_forward(
                    self.net.pool_history(torch.from_numpy(hist)),
                    torch.from_numpy(np.ascontiguousarray(users.activity[sl], dtype="float32")),
                    torch.from_numpy(country[sl])).numpy()
        return out

    def save(self, path: Path | str) -> dict[str, str]:
        """Write ``model.pt`` (a state dict of tensors) and ``config.json`` under ``path``."""
        import torch

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), path / "model.pt")
        meta = {"format": FORMAT_VERSION, "config": self.config.to_dict(),
                "vocab": self.vocab.to_dict(), "text_dim": self.text_dim,
                "n_ids": len(self.known_ids), "training_log": self.training_log}
        (path / "config.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        return {"model": str(path / "model.pt"), "config": str(path / "config.json")}

    @classmethod
    def load(cls, path: Path | str) -> TwoTowerModel:
        """The model saved under ``path`` (tensors only: ``torch.load(weights_only=True)``)."""
        import torch

        path = Path(path)
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise TwoTowerError(f"{path / 'config.json'}: format {meta.get('format')!r}, "
                                f"expected {FORMAT_VERSION}")
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        known = state["known_ids"].numpy()
        model = cls(TwoTowerConfig.from_dict(meta["config"]), Vocab.from_dict(meta["vocab"]),
                    known, meta["text_dim"], training_log=meta.get("training_log"))
        model.net.load_state_dict(state)
        return model


def load(path: Path | str) -> TwoTowerModel:
    """Shorthand for :meth:`TwoTowerModel.load`."""
    return TwoTowerModel.load(path)


# --- Training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ragged:
    """Users' history id indices, concatenated (no padding), with per-user offsets."""

    flat: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, known_ids: np.ndarray, users: UserFeatures, chunk: int = 16_384) -> _Ragged:
        """From the users' histories, a chunk of users at a time (never the whole padded
        users x history_len matrix of indices at once)."""
        flats, counts = [], []
        for s in range(0, len(users), chunk):
            hist_idx = _history_index(known_ids, users, slice(s, s + chunk))
            valid = hist_idx != PAD
            flats.append(hist_idx[valid].astype("int64"))
            counts.append(valid.sum(axis=1).astype("int64"))
        count = np.concatenate(counts) if counts else np.zeros(0, dtype="int64")
        offsets = np.concatenate([[0], np.cumsum(count)[:-1]]).astype("int64")
        flat = np.concatenate(flats) if flats else np.zeros(0, dtype="int64")
        return cls(flat, offsets, count)

    def select(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``flat``, bag offsets) of the histories of ``users``, in order."""
        lengths = self.counts[users]
        bag_offsets = np.cumsum(lengths) - lengths
        shift = np.repeat(self.offsets[users] - bag_offsets, lengths)
        return np.arange(int(lengths.sum())) + shift, bag_offsets

    def contains(self, users: np.ndarray, ids: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
        """Whether each ``ids[k]`` (an id index, never padding) is in the (truncated)
        history of ``users[k]``: (user, id) keys looked up in the sorted keys of the
        histories, a chunk of pairs at a time."""
        width = int(max(self.flat.max(initial=0), ids.max(initial=0))) + 1
        keys = np.repeat(np.arange(len(self.counts), dtype="int64"), self.counts) * width
        keys += self.flat
        keys.sort()
        out = np.zeros(len(users), dtype=bool)
        if not len(keys):
            return out
        for s in range(0, len(users), chunk):
            want = users[s:s + chunk].astype("int64") * width + ids[s:s + chunk]
            pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
            out[s:s + chunk] = keys[pos] == want
        return out


def training_steps(n_pairs: int, config: TwoTowerConfig) -> int:
    """Optimizer steps of a fit on ``n_pairs`` pairs: ``epochs`` passes of
    ``n_pairs // batch_size`` steps (at least one), capped at ``max_steps`` when set."""
    total = max(1, n_pairs // config.batch_size) * config.epochs
    return min(total, config.max_steps) if config.max_steps else total


def train(pairs: pd.DataFrame, items: ItemFeatures, users: UserFeatures,
          config: TwoTowerConfig = TwoTowerConfig(), vocab: Vocab | None = None,
          on_epoch: Callable[[dict, TwoTowerModel], None] | None = None) -> TwoTowerModel:
    """Train on (user_id, item_id) pairs; ``items`` and ``users`` cover every pair.

    ``vocab`` is the vocabulary ``items``/``users`` were encoded with (its sizes size the
    embedding tables; default: inferred from the largest index seen, with no names).
    ``on_epoch(info, model)`` is called after each epoch with ``{"epoch", "loss",
    "seconds"}`` and the model as trained so far.

    Each step takes ``batch_size`` pairs in a seeded order (a fresh permutation per
    epoch; the learning rate decays linearly to 0). Each user of the step has its history
    pooled once; each pair's own item is then taken out of its user's pooled history, so
    the tower never sees the item it must predict.
    """
    import torch

    if len(pairs) == 0:
        raise TwoTowerError("pairs: empty; nothing to train on")
    # Row of each pair's item and user (-1: none; the ids of a features object are unique).
    p_item = pd.Index(items.item_ids).get_indexer(pairs["item_id"].to_numpy())
    p_user = pd.Index(users.user_ids).get_indexer(pairs["user_id"].to_numpy())
    if (p_item < 0).any():
        bad = pairs["item_id"].to_numpy()[p_item < 0][0]
        raise TwoTowerError(f"pairs: item_id {bad} has no row in ItemFeatures")
    if (p_user < 0).any():
        bad = pairs["user_id"].to_numpy()[p_user < 0][0]
        raise TwoTowerError(f"pairs: user_id {bad} has no row in UserFeatures")
    p_item, p_user = p_item.astype("int64", copy=False), p_user.astype("int64", copy=False)
    if vocab is None:
        vocab = Vocab(tuple(f"c{i}" for i in range(int(items.category.max(initial=0)))),
                      tuple(f"t{i}" for i in range(int(items.tags.max(initial=0)))),
                      tuple(f"k{i}" for i in range(int(users.country.max(initial=0)))))
    known = np.unique(pairs["item_id"].to_numpy(dtype="int64"))
    item_id_idx = _id_index(known, items.item_ids)
    p_id = item_id_idx[p_item]
    ragged = _Ragged.of(known, users)
    p_inh = ragged.contains(p_user, p_id)
    log_q_all = sampling_log_probs(p_item, len(items))
    text_dim = 0 if items.text is None else items.text.shape[1]
    cfg = config
    with _torch_scope(cfg.threads, cfg.seed):
        model = TwoTowerModel(cfg, vocab, known, text_dim)
        net = model.net
        t = torch.from_numpy
        item_id_t, cat_t, tags_t = t(item_id_idx), t(items.category), t(items.tags)
        text_t = None if items.text is None else t(items.text)
        act_t = t(np.ascontiguousarray(users.activity, dtype="float32"))
        ctry_t, count_t = t(users.country), t(ragged.counts)
        # Expected count of each item among a step's candidates: B * q(i) from the batch's
        # positives, plus M / N from M uniform draws over the N catalog items.
        q_t = t(np.exp(log_q_all))
        n_uniform = cfg.uniform_negatives / len(items)
        gen = torch.Generator().manual_seed(cfg.seed)
        neg_rng = np.random.default_rng([cfg.seed, 2])
        n, bs = len(p_item), cfg.batch_size
        steps = max(1, n // bs)
        budget = training_steps(n, cfg)
        optimizers = _optimizers(net, cfg, budget)
        epochs = -(-budget // steps)
        for epoch in range(epochs):
            net.train()
            t0 = time.perf_counter()
            order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            total = 0.0
            epoch_steps = min(steps, budget - epoch * steps)
            for step in range(epoch_steps):
                b = order[step * bs:(step + 1) * bs] if n >= bs else order
                ib, ub = t(p_item[b]), t(p_user[b])
                uniq, inv = np.unique(p_user[b], return_inverse=True)
                inv_t, pos_ids = t(inv), t(p_id[b])
                inh = t(p_inh[b].astype("float32"))
                # Through the bag (not weight[ids]): the gradient stays sparse.
                e_pos = net.history(pos_ids[:, None]) * inh[:, None]
                sel, offsets = ragged.select(uniq)
                sums = net.history(t(ragged.flat[sel]), t(offsets))[inv_t]
                # Leave one out: the positive leaves its user's pooled history.
                pooled = _ratio(sums - e_pos, count_t[ub].float() - inh)
                u = net.user_forward(pooled, act_t[ub], ctry_t[ub])
                cand = ib
                if cfg.uniform_negatives:
                    extra = neg_rng.integers(0, len(items), cfg.uniform_negatives)
                    cand = torch.cat([ib, t(extra)])
                keep = (torch.rand(len(cand), generator=gen) >= cfg.id_dropout).float()
                v = net.item_forward(item_id_t[cand], cat_t[cand], tags_t[cand],
                                     None if text_t is None else text_t[cand], keep)
                same_user = torch.zeros((len(b), len(cand)), dtype=torch.bool)
                same_user[:, :len(b)] = ub[:, None] == ub[None, :]
                log_e = torch.log(len(b) * q_t[cand] + n_uniform)
                logits = in_batch_logits(u, v, cfg.logq * log_e if cfg.logq else None,
                                         cfg.temperature, ib[:, None] == cand[None, :],
                                         same_user)
                loss = in_batch_loss(logits)
                for opt, _ in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt, sched in optimizers:
                    opt.step()
                    sched.step()
                total += float(loss.detach())
            info = {"epoch": epoch + 1, "steps": epoch_steps,
                    "loss": round(total / epoch_steps, 5),
                    "seconds": round(time.perf_counter() - t0, 2)}
            model.training_log.append(info)
            log.info("two-tower epoch %d/%d (%d steps): loss %.4f (%.1fs)", epoch + 1,
                     epochs, epoch_steps, info["loss"], info["seconds"])
            if on_epoch is not None:
                on_epoch(info, model)
    return model


def fit(pairs: pd.DataFrame, items: pd.DataFrame, config: TwoTowerConfig = TwoTowerConfig(),
        *, countries: pd.Series | None = None, text: np.ndarray | None = None,
        on_epoch: Callable[[dict, TwoTowerModel], None] | None = None,
        ) -> tuple[TwoTowerModel, ItemFeatures, UserFeatures]:
    """Vocabulary, features and a trained model from frames.

    ``pairs``: user_id, item_id, timestamp; ``items``: item_id, category, tags (every item
    of ``pairs`` among them); ``countries``: country code by user id; ``text``: embeddings
    row-aligned with ``items``. Returns the model and the features it was trained on.
    """
    ctry = None if countries is None else countries.dropna().unique()
    vocab = build_vocab(items, ctry)
    item_feats = ItemFeatures.from_frame(items, vocab, text, config.max_tags)
    user_feats = UserFeatures.from_pairs(pairs, config.history_len, countries=countries,
                                         vocab=vocab)
    model = train(pairs, item_feats, user_feats, config, vocab, on_epoch)
    return model, item_feats, user_feats
