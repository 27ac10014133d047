"""Triton python-backend model `fraud`: calibrated fraud probability + per-feature contributions.

Input  FEATURES [F] fp32 (order: meta.json "features")
Output SCORE    [1] fp32  calibrated P(fraud)
       CONTRIB  [F] fp32  d(logit)/dx * (x - training mean): each feature's contribution to the
                          calibrated logit relative to an average training order (reason codes)
       META     [1] bytes JSON {"version", "features", "thresholds"} of the meta.json this model
                          serves, only when a request asks for it: the start-up contract check of
                          the workers and the HTTP service (scorers.fraud.check_contract)

Self-contained (torch + numpy only): the network class below is also imported by the training
code (models/fraud.py), so training and serving share one definition. Artefacts beside this
file: meta.json (features, mean/std, calibration, version) and fraud.pt (state dict).
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

WEIGHTS = "fraud.pt"


class FraudNet(nn.Module):
    """Standardise (x - mean) / std, zero inactive features -> MLP -> raw logit;
    Platt calibration a * raw + b -> sigmoid."""

    def __init__(self, n_features: int, hidden: list[int]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        # 0 for features that were constant in training: their weights are untrained
        self.register_buffer("active", torch.ones(n_features))
        self.register_buffer("calib", torch.tensor([1.0, 0.0]))  # a, b
        layers: list[nn.Module] = []
        d = n_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.SiLU()]
            d = h
        layers.append(nn.Linear(d, 1))
        self.mlp = nn.Sequential(*layers)

    def raw_logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp((x - self.mean) / self.std * self.active).squeeze(-1)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.calib[0] * self.raw_logit(x) + self.calib[1]

    def score_and_contrib(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, F] -> (score [B, 1], contrib [B, F]); one forward + one backward pass."""
        # missing values count as average (zero contribution) rather than poisoning the score
        x = torch.where(torch.isfinite(x), x, self.mean.expand_as(x)).detach()
        with torch.enable_grad():
            x.requires_grad_(True)
            logit = self.logit(x)
            (grad,) = torch.autograd.grad(logit.sum(), x)
        contrib = grad * (x.detach() - self.mean)
        return torch.sigmoid(logit.detach()).unsqueeze(-1), contrib


def load(version_dir: str, device: str = "cpu") -> tuple[FraudNet, dict]:
    with open(os.path.join(version_dir, "meta.json")) as f:
        meta = json.load(f)
    net = FraudNet(len(meta["features"]), meta["hidden"])
    state = torch.load(os.path.join(version_dir, WEIGHTS), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, meta


def predict(net: FraudNet, features: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """numpy in, numpy out: the exact computation Triton serves."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    score, contrib = net.score_and_contrib(x)
    return score.cpu().numpy().astype(np.float32), contrib.cpu().numpy().astype(np.float32)


class TritonPythonModel:
    def initialize(self, args):
        kind = args.get("model_instance_kind", "CPU")
        self.device = "cuda" if kind == "GPU" and torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            torch.cuda.set_device(int(args.get("model_instance_device_id", 0)))
        vdir = os.path.join(args["model_repository"], args["model_version"])
        self.net, self.meta = load(vdir, self.device)
        self.n_features = len(self.meta["features"])
        t = self.meta.get("thresholds") or {}
        self.meta_json = json.dumps({"model": self.meta.get("model"), "version": self.meta.get("version"),
                                     "features": list(self.meta["features"]),
                                     "thresholds": {k: t[k] for k in ("review", "decline") if k in t}}).encode()

    def execute(self, requests):
        try:
            arrays = [pb_utils.get_input_tensor_by_name(r, "FEATURES").as_numpy() for r in requests]
            sizes = [a.shape[0] for a in arrays]
            score, contrib = predict(self.net, np.concatenate(arrays, axis=0), self.device)
        except Exception as exc:  # one failed batch: every request gets the error
            err = pb_utils.TritonError(f"fraud: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=err) for _ in requests]
        responses, off = [], 0
        for r, n in zip(requests, sizes):
            tensors = [pb_utils.Tensor("SCORE", score[off : off + n]), pb_utils.Tensor("CONTRIB", contrib[off : off + n])]
            if "META" in r.requested_output_names():  # the contract check only: not on every score
                tensors.append(pb_utils.Tensor("META", np.array([[self.meta_json]] * n, dtype=np.object_)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            off += n
        return responses

    def finalize(self):
        self.net = None
