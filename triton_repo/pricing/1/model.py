"""Triton python-backend model `pricing`: expected 7-day demand at candidate price multipliers.

Input  FEATURES    [5] fp32  [log_price, log1p_units_7d, log1p_orders_7d, month_sin, month_cos]
                             (item's current unit price; units sold and distinct orders in the
                             item's previous 7 days; month of year m = 1..12 as
                             sin/cos(2 * pi * (m - 1) / 12))
Output MULTIPLIERS [C] fp32  candidate price multipliers (meta.json "multipliers"; same for every row)
       DEMAND      [C] fp32  expected units over the next 7 days at price * multiplier

Model: log E[units] = base(units_7d, orders_7d, month) + elasticity * (log_price - ref);
at price * m the demand is E[units] * m ** elasticity (constant-elasticity curve).

Self-contained (torch + numpy only); models/pricing.py imports PricingNet from here.
Artefacts beside this file: meta.json and pricing.pt (state dict).
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

WEIGHTS = "pricing.pt"
N_FEATURES = 5


class PricingNet(nn.Module):
    def __init__(self, multipliers: list[float], hidden: int):
        super().__init__()
        n_other = N_FEATURES - 1
        self.register_buffer("multipliers", torch.tensor(multipliers, dtype=torch.float32))
        self.register_buffer("mean", torch.zeros(n_other))  # of features[1:]
        self.register_buffer("std", torch.ones(n_other))
        self.register_buffer("ref_log_price", torch.zeros(()))
        self.base = nn.Sequential(nn.Linear(n_other, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.elasticity = nn.Parameter(torch.tensor(-1.0))

    def log_rate(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 5] -> log expected units over the next 7 days at the given price, [B]."""
        z = (x[:, 1:] - self.mean) / self.std
        return self.base(z).squeeze(-1) + self.elasticity * (x[:, 0] - self.ref_log_price)

    def demand(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 5] -> (multipliers [B, C], demand [B, C])."""
        log_m = torch.log(self.multipliers)
        d = torch.exp(self.log_rate(x).unsqueeze(1) + self.elasticity * log_m.unsqueeze(0))
        return self.multipliers.unsqueeze(0).expand(x.shape[0], -1), d


def load(version_dir: str, device: str = "cpu") -> tuple[PricingNet, dict]:
    with open(os.path.join(version_dir, "meta.json")) as f:
        meta = json.load(f)
    net = PricingNet(meta["multipliers"], meta["hidden"])
    state = torch.load(os.path.join(version_dir, WEIGHTS), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval().to(device)
    return net, meta


def predict(net: PricingNet, features: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """numpy in, numpy out: the exact computation Triton serves."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    with torch.no_grad():
        m, d = net.demand(x)
    return m.cpu().numpy().astype(np.float32), d.cpu().numpy().astype(np.float32)


class TritonPythonModel:
    def initialize(self, args):
        kind = args.get("model_instance_kind", "CPU")
        self.device = "cuda" if kind == "GPU" and torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            torch.cuda.set_device(int(args.get("model_instance_device_id", 0)))
        vdir = os.path.join(args["model_repository"], args["model_version"])
        self.net, self.meta = load(vdir, self.device)

    def execute(self, requests):
        try:
            arrays = [pb_utils.get_input_tensor_by_name(r, "FEATURES").as_numpy() for r in requests]
            sizes = [a.shape[0] for a in arrays]
            mult, demand = predict(self.net, np.concatenate(arrays, axis=0), self.device)
        except Exception as exc:
            err = pb_utils.TritonError(f"pricing: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=err) for _ in requests]
        responses, off = [], 0
        for n in sizes:
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("MULTIPLIERS", mult[off : off + n]),
                        pb_utils.Tensor("DEMAND", demand[off : off + n]),
                    ]
                )
            )
            off += n
        return responses

    def finalize(self):
        self.net = None
