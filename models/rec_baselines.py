"""Session-based recommendation baselines (numpy; scipy.sparse, which scikit-learn brings, for all but popularity), on :class:`models.sessions.SessionData`.

Every method scores items from the training sessions only and returns a top-k list for a
session prefix (item indices in time order; 0 = an item unseen in training). Scores are
non-negative; items that score 0 (and ties) are ranked by training popularity, which is the
index order, so every list is full and deterministic.

* :class:`Popularity`: training click counts.
* :class:`Markov`: first-order Markov chain: counts of the items that followed the prefix's
  last item in training sessions ("last-item successor counts").
* :class:`ItemKNN`: session co-occurrence item-kNN (the ItemKNN baseline of GRU4Rec's paper and
  session-rec): sim(i, j) = n_ij / ((n_i + lambda)^alpha (n_j + lambda)^(1 - alpha)) with n_ij
  the sessions holding both items, n_i the sessions holding i; the prefix's last item's row.
* :class:`VSKNN`: session-kNN with linearly decaying weights (V-SKNN, Ludewig & Jannach 2018,
  session-rec's VMContextKNN core): the prefix is a vector with weight pos / len for the item
  at position pos (1-based, so the last click weighs 1); candidate neighbours are the
  ``sample_size`` most recent training sessions holding any prefix item; similarity = dot
  product of that vector with a neighbour's binary item vector; the ``k`` most similar
  neighbours vote score(item) = sum of similarities of the neighbours holding it.
"""

from __future__ import annotations

import numpy as np

from models.sessions import SessionData


def top_k(idx: np.ndarray, val: np.ndarray, k: int, n_items: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Top-k item indices from sparse scores (idx, val >= 0): descending score, ties and the rest
    by index (= training popularity); never index 0 or an ``exclude`` item. -> [k] int64."""
    idx = np.asarray(idx, dtype=np.int64)
    val = np.asarray(val, dtype=np.float64)
    bad = idx == 0
    if exclude is not None and len(exclude):
        bad |= np.isin(idx, exclude)
    keep = ~bad & (val > 0)
    idx, val = idx[keep], val[keep]
    if len(idx) > k:
        kth = np.partition(val, len(val) - k)[len(val) - k]
        sel = val >= kth
        idx, val = idx[sel], val[sel]
    order = np.lexsort((idx, -val))[:k]
    out = idx[order]
    if len(out) < k:  # fill with the most popular items not yet listed nor excluded
        taken = set(out.tolist()) | ({0} if exclude is None else set(np.asarray(exclude).tolist()) | {0})
        fill = []
        i = 1
        while len(out) + len(fill) < k and i <= n_items:
            if i not in taken:
                fill.append(i)
            i += 1
        out = np.r_[out, np.asarray(fill, dtype=np.int64)]
    return out.astype(np.int64)


def _session_matrix(data: SessionData):
    """[S, V + 1] binary session x item matrix (scipy.sparse CSR) of the training sessions."""
    import scipy.sparse as sp

    rows = np.repeat(np.arange(len(data.train)), [len(s) for s in data.train])
    cols = np.concatenate(data.train) if data.train else np.zeros(0, np.int64)
    m = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(data.train), data.n_items + 1))
    m.data[:] = 1.0  # duplicates summed -> binary
    return m


class Popularity:
    name = "popularity"

    def __init__(self, data: SessionData):
        self.n = data.n_items

    def recommend(self, prefix: np.ndarray, k: int = 20, exclude: np.ndarray | None = None) -> np.ndarray:
        return top_k(np.zeros(0, np.int64), np.zeros(0), k, self.n, exclude)


class Markov:
    name = "markov"

    def __init__(self, data: SessionData):
        import scipy.sparse as sp

        self.n = data.n_items
        src = np.concatenate([s[:-1] for s in data.train if len(s) > 1] or [np.zeros(0, np.int64)])
        dst = np.concatenate([s[1:] for s in data.train if len(s) > 1] or [np.zeros(0, np.int64)])
        self.T = sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(self.n + 1, self.n + 1))
        self.T.sum_duplicates()

    def recommend(self, prefix: np.ndarray, k: int = 20, exclude: np.ndarray | None = None) -> np.ndarray:
        last = int(prefix[-1]) if len(prefix) else 0
        a, b = self.T.indptr[last], self.T.indptr[last + 1]
        return top_k(self.T.indices[a:b], self.T.data[a:b], k, self.n, exclude)


class ItemKNN:
    name = "item_knn"

    def __init__(self, data: SessionData, lam: float = 20.0, alpha: float = 0.5):
        import scipy.sparse as sp

        self.n = data.n_items
        B = _session_matrix(data)
        C = (B.T @ B).tocsr()  # n_ij (diagonal: n_i)
        n_i = np.asarray(B.sum(0)).ravel()
        C = C.tocoo()
        vals = C.data / ((n_i[C.row] + lam) ** alpha * (n_i[C.col] + lam) ** (1 - alpha))
        self.S = sp.csr_matrix((vals, (C.row, C.col)), shape=C.shape)
        self.lam, self.alpha = lam, alpha

    def recommend(self, prefix: np.ndarray, k: int = 20, exclude: np.ndarray | None = None) -> np.ndarray:
        last = int(prefix[-1]) if len(prefix) else 0
        a, b = self.S.indptr[last], self.S.indptr[last + 1]
        return top_k(self.S.indices[a:b], self.S.data[a:b], k, self.n, exclude)


class VSKNN:
    name = "v_sknn"

    def __init__(self, data: SessionData, k: int = 100, sample_size: int = 500):
        self.n = data.n_items
        self.B = _session_matrix(data)  # csr [S, V+1]
        self.Bc = self.B.tocsc()
        self.time = np.asarray(data.train_time, dtype=np.float64)
        self.k, self.sample_size = k, sample_size

    def scores(self, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prefix = np.asarray(prefix, dtype=np.int64)
        L = len(prefix)
        if L == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        w = np.zeros(self.n + 1)
        for pos, item in enumerate(prefix, start=1):  # a repeated item keeps its latest weight
            w[item] = pos / L
        w[0] = 0.0
        items = np.nonzero(w)[0]
        if len(items) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        sub = self.Bc[:, items]
        sim = np.asarray(sub @ w[items]).ravel()
        cand = np.nonzero(sim > 0)[0]
        if len(cand) > self.sample_size:  # the most recent sessions (ties by index, i.e. file order)
            order = np.lexsort((-cand, -self.time[cand]))[: self.sample_size]
            cand = cand[order]
        if len(cand) > self.k:
            order = np.lexsort((cand, -sim[cand]))[: self.k]
            cand = cand[order]
        import scipy.sparse as sp

        row = sp.csr_matrix(sim[cand][None, :]) @ self.B[cand]
        row = row.tocsr()
        return row.indices.astype(np.int64), row.data

    def recommend(self, prefix: np.ndarray, k: int = 20, exclude: np.ndarray | None = None) -> np.ndarray:
        idx, val = self.scores(prefix)
        return top_k(idx, val, k, self.n, exclude)


BASELINES = (Popularity, Markov, ItemKNN, VSKNN)
