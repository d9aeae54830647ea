"""The learned ranker: stage 2 of the funnel (PyTorch).

A small MLP scores each candidate from its features (models/features.py); ``ensemble``
such nets, trained with consecutive seeds, average their scores (steadier than one). Each
is trained listwise: per user, a softmax over the user's candidates, with the candidates
the user interacted with in the label period as the targets (cross-entropy averaged over
each user's positives). Inputs are standardised with the training means and deviations, which
are saved with the weights. With validation candidates (users the nets do not train on),
each net keeps the weights of its epoch with the best validation NDCG@10 and stops after
``patience`` epochs without a gain (early stopping). Seeded; trains on one thread by
default, so a run is repeatable and does not fight other jobs for the cores.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RankerConfig:
    hidden: tuple[int, ...] = (32,)
    epochs: int = 20
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_users: int = 32
    dropout: float = 0.1
    seed: int = 42
    threads: int = 1
    ensemble: int = 3  # nets trained with seeds seed, seed+1, ...; their scores averaged
    patience: int = 5  # epochs without a validation gain before a net stops

    def __post_init__(self) -> None:
        if (self.epochs < 1 or self.batch_users < 1 or self.lr <= 0 or self.ensemble < 1
                or self.patience < 1):
            raise ValueError("epochs, batch_users, ensemble and patience must be >= 1 and "
                             "lr > 0")
        if not all(h >= 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {self.hidden}")


def _net(n_in: int, cfg: RankerConfig):
    import torch

    layers: list = []
    width = n_in
    for h in cfg.hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU(), torch.nn.Dropout(cfg.dropout)]
        width = h
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


class Ranker:
    def __init__(self, config: RankerConfig, names: list[str], mean: np.ndarray,
                 std: np.ndarray, states: list[dict] | None = None):
        import torch

        self.config, self.names = config, list(names)
        self.mean, self.std = mean.astype("float32"), std.astype("float32")
        self.nets = []
        for m in range(config.ensemble):
            torch.manual_seed(config.seed + m)
            net = _net(len(names), config)
            if states is not None:
                net.load_state_dict(states[m])
            net.eval()
            self.nets.append(net)
        self.log: list[dict] = []

    def score(self, x: np.ndarray, batch: int = 65536) -> np.ndarray:
        import torch

        if x.shape[1] != len(self.names):
            raise ValueError(f"ranker expects {len(self.names)} features, got {x.shape[1]}")
        out = np.empty(len(x), "float32")
        with torch.no_grad():
            for a in range(0, len(x), batch):
                t = torch.from_numpy((x[a:a + batch] - self.mean) / self.std)
                out[a:a + batch] = sum(net(t).squeeze(1) for net in self.nets).numpy() \
                    / len(self.nets)
        return out

    def params(self) -> dict:
        """The configuration as plain JSON values (what ``model_runs`` records)."""
        return {**asdict(self.config), "hidden": list(self.config.hidden)}

    def save(self, path: Path | str) -> None:
        import torch

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save([net.state_dict() for net in self.nets], path / "ranker.pt")
        meta = {"config": self.params(),
                "features": self.names, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "log": self.log}
        (path / "ranker.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: Path | str) -> Ranker:
        import torch

        path = Path(path)
        meta = json.loads((path / "ranker.json").read_text())
        cfg = RankerConfig(**{**meta["config"], "hidden": tuple(meta["config"]["hidden"])})
        states = torch.load(path / "ranker.pt", weights_only=True)
        r = cls(cfg, meta["features"], np.array(meta["mean"]), np.array(meta["std"]), states)
        r.log = meta.get("log", [])
        return r


class RankerSet:
    """Several rankers (the folds of a cross-fit, each with its own architecture) scoring
    together: the mean of their scores. Saved as one folder per member."""

    def __init__(self, members: list[Ranker]):
        if not members:
            raise ValueError("a ranker set needs at least one ranker")
        if any(m.names != members[0].names for m in members):
            raise ValueError("the rankers of a set must read the same features")
        self.members = members
        self.names = members[0].names

    @property
    def log(self) -> list[dict]:
        return [dict(e, member=k + 1) for k, m in enumerate(self.members) for e in m.log]

    def score(self, x: np.ndarray) -> np.ndarray:
        return (sum(m.score(x) for m in self.members) / len(self.members)).astype("float32")

    def params(self) -> dict:
        return {"members": [m.params() for m in self.members]}

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for k, m in enumerate(self.members):
            m.save(path / f"member-{k + 1}")
        (path / "ranker.json").write_text(json.dumps({"members": len(self.members),
                                                      "features": self.names}, indent=1))


def load(path: Path | str) -> Ranker | RankerSet:
    """A saved :class:`Ranker` or :class:`RankerSet`."""
    path = Path(path)
    meta = json.loads((path / "ranker.json").read_text())
    if "members" in meta:
        return RankerSet([Ranker.load(path / f"member-{k + 1}")
                          for k in range(int(meta["members"]))])
    return Ranker.load(path)


def scaling(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature column, std 1 where a column is constant."""
    mean = x.mean(0)
    std = x.std(0)
    std[std == 0] = 1.0
    return mean, std


def ndcg_at(scores: np.ndarray, user: np.ndarray, label: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over the users of ``user`` (sorted) that have a positive: each user's
    candidates ordered by ``scores`` (ties: candidate order), gain 1 per positive."""
    starts = np.searchsorted(user, np.unique(user))
    ends = np.append(starts[1:], len(user))
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    total, n = 0.0, 0
    for a, b in zip(starts, ends, strict=True):
        y = label[a:b]
        pos = int(y.sum())
        if not pos:
            continue
        top = np.argsort(-scores[a:b], kind="stable")[:k]
        total += float((y[top] * discount[:len(top)]).sum()) / discount[:min(pos, k)].sum()
        n += 1
    return total / max(n, 1)


def train(x: np.ndarray, user: np.ndarray, label: np.ndarray, names: list[str],
          config: RankerConfig = RankerConfig(), log=None,
          val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
          scale: tuple[np.ndarray, np.ndarray] | None = None) -> Ranker:
    """Fit on candidates ``x`` (m, f) of users ``user`` (m,, sorted) with 0/1 ``label``.

    ``val``: (x, user, label) of other users; each net then keeps its epoch with the best
    NDCG@10 on them and stops after ``config.patience`` epochs without a gain.
    ``scale``: (mean, std) to standardise with (default: those of ``x``).
    Users without a positive candidate teach nothing listwise and are left out.
    """
    import torch

    if len(x) != len(user) or len(x) != len(label):
        raise ValueError("x, user and label must have the same length")
    starts = np.searchsorted(user, np.unique(user))
    ends = np.append(starts[1:], len(user))
    groups = [(a, b) for a, b in zip(starts, ends, strict=True) if label[a:b].any()]
    if not groups:
        raise ValueError("no user has a positive candidate: nothing to train the ranker on")
    mean, std = scale if scale is not None else scaling(x)
    model = Ranker(config, names, mean, std)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        xs = torch.from_numpy(((x - model.mean) / model.std).astype("float32"))
        xv = None if val is None else \
            torch.from_numpy(((val[0] - model.mean) / model.std).astype("float32"))
        width = max(b - a for a, b in groups)
        for m, net in enumerate(model.nets):
            seed = config.seed + m
            torch.manual_seed(seed)
            rng = np.random.default_rng(seed)
            net.train()
            opt = torch.optim.Adam(net.parameters(), lr=config.lr,
                                   weight_decay=config.weight_decay)
            best, best_state, best_epoch = -1.0, None, 0
            for epoch in range(config.epochs):
                t0 = time.perf_counter()
                total, n = 0.0, 0
                order = rng.permutation(len(groups))
                for start in range(0, len(order), config.batch_users):
                    batch = [groups[g] for g in order[start:start + config.batch_users]]
                    idx = np.full((len(batch), width), -1, "int64")
                    for r, (a, b) in enumerate(batch):
                        idx[r, :b - a] = np.arange(a, b)
                    mask = torch.from_numpy(idx >= 0)
                    y = torch.from_numpy(np.where(idx >= 0, label[np.maximum(idx, 0)], 0)
                                         .astype("float32"))
                    logits = net(xs[torch.from_numpy(np.maximum(idx, 0))]).squeeze(-1)
                    logits = logits.masked_fill(~mask, -1e9)
                    logp = torch.log_softmax(logits, dim=1)
                    loss = -((logp * y).sum(1) / y.sum(1)).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(batch)
                    n += len(batch)
                info = {"net": m + 1, "epoch": epoch + 1,
                        "loss": round(total / max(n, 1), 5),
                        "seconds": round(time.perf_counter() - t0, 3)}
                if xv is not None:
                    net.eval()
                    with torch.no_grad():
                        sv = net(xv).squeeze(1).numpy()
                    net.train()
                    info["val_ndcg@10"] = round(ndcg_at(sv, val[1], val[2]), 5)
                    if info["val_ndcg@10"] > best:
                        best, best_epoch = info["val_ndcg@10"], epoch + 1
                        best_state = {k: v.clone() for k, v in net.state_dict().items()}
                model.log.append(info)
                if log is not None:
                    log(info)
                if xv is not None and epoch + 1 - best_epoch >= config.patience:
                    break
            if best_state is not None:
                net.load_state_dict(best_state)
                model.log.append({"net": m + 1, "best_epoch": best_epoch,
                                  "val_ndcg@10": best})
            net.eval()
    finally:
        torch.set_num_threads(prev_threads)
    return model
