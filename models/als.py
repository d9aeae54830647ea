"""Implicit ALS in numpy: the least-squares solve that Spark MLlib runs per user.

Spark's implicit ALS (Hu, Koren, Volinsky 2008, with ALS-WR regularisation) solves, for a
user with positive interactions on items I_u with weights r_ui,

    (V^T V + sum_{i in I_u} (c_ui - 1) v_i v_i^T + reg * |I_u| * Id) x_u
        = sum_{i in I_u} c_ui v_i,          c_ui = 1 + alpha * r_ui.

:func:`solve_users` is that solve; it folds new users in against fixed item factors and
is the reference the Spark job is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def solve_users(item_factors: np.ndarray, item_rows: Sequence[np.ndarray],
                weights: Sequence[np.ndarray], reg: float, alpha: float) -> np.ndarray:
    """User vectors for the given interactions, item factors held fixed."""
    v = np.asarray(item_factors, dtype="float64")
    rank = v.shape[1]
    gram = v.T @ v
    out = np.zeros((len(item_rows), rank), dtype="float64")
    for u, (rows, w) in enumerate(zip(item_rows, weights, strict=True)):
        rows = np.asarray(rows, dtype="int64")
        w = np.asarray(w, dtype="float64")
        pos = w > 0
        rows, w = rows[pos], w[pos]
        if len(rows) == 0:
            continue
        vi = v[rows]
        c = 1.0 + alpha * w
        a = gram + (vi.T * (c - 1.0)) @ vi + reg * len(rows) * np.eye(rank)
        b = vi.T @ c
        out[u] = np.linalg.solve(a, b)
    return out


def fit(matrix: np.ndarray, rank: int, reg: float, alpha: float, iters: int,
        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dense reference ALS for tiny matrices (tests): returns (user, item) factors."""
    rng = np.random.default_rng(seed)
    n_users, n_items = matrix.shape
    users = rng.normal(0, 0.1, (n_users, rank))
    items = rng.normal(0, 0.1, (n_items, rank))
    u_rows = [np.nonzero(matrix[u])[0] for u in range(n_users)]
    i_rows = [np.nonzero(matrix[:, i])[0] for i in range(n_items)]
    for _ in range(iters):
        items = solve_users(users, i_rows, [matrix[r, i] for i, r in enumerate(i_rows)],
                            reg, alpha)
        users = solve_users(items, u_rows, [matrix[u, r] for u, r in enumerate(u_rows)],
                            reg, alpha)
    return users, items
