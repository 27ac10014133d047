"""Triton python-backend model `recommender`: next-item top-20 from a user's recent items.

Input  ITEM_HISTORY [20] bytes   the user's most recent item ids, most recent first, padded with b""
Output ITEMS        [20] bytes   top-20 item ids; history items only when the model is repeat-aware
                                 (meta.json ``repeat.weight`` > 0), never otherwise; a re-visited
                                 history item need not be in the vocabulary (it is its own input id)
       SCORES       [20] fp32    probability of each as the next item: repeat-aware, the mixture
                                 P(re-visit of history position r | L distinct history items) for
                                 history items and (1 - P(any re-visit | L)) x softmax over the
                                 vocabulary minus the history for the rest, the re-visit part
                                 weighted by ``repeat.weight`` and renormalised; otherwise the softmax
       KNOWN        [1]  int32   history entries the model knows (in its vocabulary); 0 = cold
                                 start: ITEMS is then the training-popularity ranking and SCORES
                                 the popularity shares

Self-contained (torch + numpy only); models/recommender.py imports RecNet from here for
training. Artefacts beside this file: meta.json, recommender.pt (state dict), items.npy (the
vocabulary: row i of the embedding table is items[i - 1]; index 0 is padding/unknown).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn

try:  # only importable inside Triton's python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # training, tests
    pb_utils = None

WEIGHTS = "recommender.pt"
VOCAB = "items.npy"
HISTORY = 20
TOP_K = 20


class RecNet(nn.Module):
    """Item + category embeddings (tied input/output), the most recent item plus a
    position-weighted pooling of the history, and a category-affinity term.

    e(item) = item embedding + embedding of the item's category;
    last = e(most recent known item); pooled = sum_j softmax(w_pos)_j e(item_j);
    user = last + tanh(W [last; pooled])   (a residual on the last item) ;
    affinity(c) = sum_j softmax(w_cat_pos)_j [category(item_j) == c] ;
    logit(item) = <user, e(item)> + bias(item) + gain * affinity(category(item)).
    Cold-start rows (no known history item) use log popularity instead.

    Repeat-aware lists (``repeat_weight`` > 0): ``repeat_table[L, r]`` = P(the next click
    re-visits the history's r-th newest item | L non-empty history entries), counted on the
    training sessions (:func:`models.recommender.repeat_table`); the weight, and whether items
    outside the vocabulary are re-visited too (``repeat_unknown``), are chosen on a validation split. The one scoring function is :meth:`recommend`, which Triton runs.
    """

    def __init__(self, n_items: int, n_categories: int, dim: int, history: int = HISTORY):
        super().__init__()
        self.emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.cat_emb = nn.Embedding(n_categories + 1, dim, padding_idx=0)
        self.register_buffer("item_cat", torch.zeros(n_items + 1, dtype=torch.int64))
        self.pos = nn.Parameter(torch.zeros(history))
        self.cat_pos = nn.Parameter(torch.zeros(history))
        self.cat_gain = nn.Parameter(torch.tensor(5.0))
        self.proj = nn.Linear(2 * dim, dim)
        self.bias = nn.Parameter(torch.zeros(n_items + 1))
        self.register_buffer("log_pop", torch.zeros(n_items + 1))
        self.register_buffer("repeat_table", torch.zeros(history + 1, history))
        self.register_buffer("repeat_weight", torch.zeros(()))
        self.register_buffer("repeat_unknown", torch.ones(()))  # 1: also re-visit items outside the vocabulary

    def user_logits(self, hist: torch.Tensor) -> torch.Tensor:
        """hist [B, H] int64 item indices (0 = padding/unknown) -> logits [B, V+1] (no masking)."""
        known = hist > 0
        table = self.item_table()
        e = table[hist]  # [B, H, d]; padding row is zero
        w = self.pos[: hist.shape[1]].unsqueeze(0).expand(hist.shape[0], -1).masked_fill(~known, -1e9)
        w = torch.softmax(w, dim=1) * known  # rows without known items -> all zero
        pooled = (w.unsqueeze(-1) * e).sum(1)
        first = torch.argmax(known.to(torch.int8), dim=1)  # most recent known position
        last = e[torch.arange(hist.shape[0], device=hist.device), first]
        user = last + torch.tanh(self.proj(torch.cat([last, pooled], dim=1)))
        # category affinity: recency-weighted share of each category in the history
        wc = self.cat_pos[: hist.shape[1]].unsqueeze(0).expand(hist.shape[0], -1).masked_fill(~known, -1e9)
        wc = torch.softmax(wc, dim=1) * known
        hist_cat = self.item_cat[hist]
        aff = torch.zeros(hist.shape[0], self.cat_emb.num_embeddings, dtype=wc.dtype, device=hist.device)
        aff = aff.scatter_add(1, hist_cat, wc)
        return user @ table.T + self.bias + self.cat_gain * aff.index_select(1, self.item_cat)

    def item_table(self) -> torch.Tensor:
        """[V+1, d]: each item's embedding plus its category's (row 0, padding, is zero)."""
        return self.emb.weight + self.cat_emb(self.item_cat)

    def recommend(self, hist: torch.Tensor, k: int = TOP_K, present: torch.Tensor | None = None,
                  repeat: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hist [B, H] (0 = padding or unknown), present [B, H] bool: non-empty entries (default: the
        known ones) -> (indices [B, k] int64, scores [B, k] fp32, known [B] int32). An index above
        V (the vocabulary size) is history position ``index - V - 1``: a re-visit of an item the
        vocabulary does not hold. ``repeat=False``: the history excluded whatever the re-visit weight
        (the evaluation's ``new`` reading)."""
        known = (hist > 0).sum(1)
        logits = self.user_logits(hist)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[:, 0] = True
        mask.scatter_(1, hist, True)  # the softmax is over the items not in the history (nor padding)
        probs = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=1)
        if repeat and float(self.repeat_weight) > 0:
            present = hist > 0 if present is None else present
            table = self.repeat_table[present.sum(1).clamp(0, hist.shape[1]), : hist.shape[1]] * present  # [B, H]
            probs = probs * (1 - table.sum(1, keepdim=True))
            rep = self.repeat_weight * table
            probs = probs.scatter(1, hist, rep * (hist > 0))  # padding / unknown land on index 0
            probs[:, 0] = 0.0
            full = torch.cat([probs, rep * (hist == 0) * self.repeat_unknown], dim=1)  # [B, V + 1 + H]
            full = full / full.sum(1, keepdim=True).clamp_min(1e-30)
            _, idx = torch.topk(full.masked_fill(full <= 0, float("-inf")), k, dim=1)
            scores = full.gather(1, idx)
        else:
            scores, idx = torch.topk(probs, k, dim=1)
        cold = known == 0
        if bool(cold.any()):
            # no known history item: the training-popularity ranking (the vocabulary is sorted
            # by popularity, so ties between equal counts keep that order) and popularity shares
            pop_idx = torch.arange(1, k + 1, device=hist.device)
            pop_share = torch.softmax(self.log_pop, dim=0)[1 : k + 1]
            idx = torch.where(cold.unsqueeze(1), pop_idx.unsqueeze(0), idx)
            scores = torch.where(cold.unsqueeze(1), pop_share.unsqueeze(0), scores)
        return idx, scores, known.to(torch.int32)


def load(version_dir: str, device: str = "cpu") -> tuple[RecNet, np.ndarray, dict]:
    with open(os.path.join(version_dir, "meta.json")) as f:
        meta = json.load(f)
    items = np.load(os.path.join(version_dir, VOCAB), allow_pickle=False)
    net = RecNet(len(items), meta["n_categories"], meta["dim"], meta["history"])
    state = torch.load(os.path.join(version_dir, WEIGHTS), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=False)  # artefacts from before the repeat buffers: repeat off
    net.eval().to(device)
    return net, items, meta


class Recommender:
    """String ids in, string ids out: the exact computation Triton serves."""

    def __init__(self, version_dir: str, device: str = "cpu"):
        self.device = device
        self.net, items, self.meta = load(version_dir, device)
        self.items = np.empty(len(items) + 1, dtype=object)
        self.items[0] = b""
        self.items[1:] = [s.encode() for s in items.tolist()]
        self.index = {s: i for i, s in enumerate(self.items.tolist()) if i > 0}

    def encode(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[B, H] bytes/str -> ([B, H] int64 indices (0 = padding or unknown), [B, H] bool non-empty
        entries, [B, H] the entries as bytes)."""
        get = self.index.get
        raw = np.asarray([v if isinstance(v, bytes) else str(v).encode() for v in history.reshape(-1).tolist()],
                         dtype=object).reshape(history.shape)
        idx = np.asarray([get(v, 0) for v in raw.reshape(-1).tolist()], dtype=np.int64).reshape(history.shape)
        return idx, raw != b"", raw

    def __call__(self, history: np.ndarray, repeat: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx, present, raw = self.encode(history)
        hist = torch.from_numpy(idx).to(self.device)
        with torch.no_grad():
            idx, scores, known = self.net.recommend(hist, present=torch.from_numpy(present).to(self.device),
                                                    repeat=repeat)
        idx = idx.cpu().numpy()
        v = len(self.items)  # V + 1: indices from here on are history positions (re-visits outside the vocabulary)
        items = self.items[np.minimum(idx, v - 1)]
        rows, cols = np.nonzero(idx >= v)
        items[rows, cols] = raw[rows, idx[rows, cols] - v]
        return (
            items,
            scores.cpu().numpy().astype(np.float32),
            known.cpu().numpy().astype(np.int32).reshape(-1, 1),
        )


class TritonPythonModel:
    def initialize(self, args):
        kind = args.get("model_instance_kind", "CPU")
        self.device = "cuda" if kind == "GPU" and torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            torch.cuda.set_device(int(args.get("model_instance_device_id", 0)))
        vdir = os.path.join(args["model_repository"], args["model_version"])
        self.rec = Recommender(vdir, self.device)

    def execute(self, requests):
        try:
            arrays = [pb_utils.get_input_tensor_by_name(r, "ITEM_HISTORY").as_numpy() for r in requests]
            sizes = [a.shape[0] for a in arrays]
            items, scores, known = self.rec(np.concatenate(arrays, axis=0))
        except Exception as exc:
            err = pb_utils.TritonError(f"recommender: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=err) for _ in requests]
        responses, off = [], 0
        for n in sizes:
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("ITEMS", items[off : off + n]),
                        pb_utils.Tensor("SCORES", scores[off : off + n]),
                        pb_utils.Tensor("KNOWN", known[off : off + n]),
                    ]
                )
            )
            off += n
        return responses

    def finalize(self):
        self.rec = None
