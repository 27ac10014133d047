"""Shared helpers of the model builders: paths, seeding, hashing, meta.json, config.pbtxt.

Every builder trains one model and writes its artefacts (weights ``.pt``, ``meta.json``,
vocabularies ``.npy``) into ``<triton_repo>/<model>/<version>/`` next to the committed
``model.py``; ``config.pbtxt`` sits one level up. The network definitions live in those
``model.py`` files (they must be self-contained: NVIDIA's Triton container does not have this
project installed), and builders import them from there with :func:`load_model_py`, so
training and serving share one definition.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import numpy as np

from streamscore.settings import ROOT, Settings

TRITON_VERSION = 1  # the version directory every builder writes into

# Training runs single-threaded: with 2 threads the accumulation of embedding gradients
# (index_put with accumulate) is not bitwise reproducible, and these models are small enough
# that one thread is as fast.
TRAIN_THREADS = 1


def model_dir(repo: str | os.PathLike, name: str) -> Path:
    return Path(repo) / name


def version_dir(repo: str | os.PathLike, name: str, version: int = TRITON_VERSION) -> Path:
    return Path(repo) / name / str(version)


def load_model_py(repo: str | os.PathLike, name: str, version: int = TRITON_VERSION) -> ModuleType:
    """Import ``<repo>/<name>/<version>/model.py`` as a module (outside Triton)."""
    path = version_dir(repo, name, version) / "model.py"
    mod_name = f"_streamscore_triton_{name}_{version}_{abs(hash(str(path.resolve())))}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(TRAIN_THREADS, os.cpu_count() or 1)))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def state_digest(state: dict) -> str:
    """sha256 over a state dict's tensor names, dtypes, shapes and bytes (stable, unlike zip files)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_version_string(name: str, digest: str, version: int = TRITON_VERSION) -> str:
    """The version the lead stamps on decisions: model name, Triton version dir, content hash."""
    return f"{name}-v{version}-{digest[:12]}"


def rel_to(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def data_file_entry(path: Path, settings: Settings) -> dict[str, str]:
    """{'path': path relative to data_dir (or repo root), 'sha256': ...}."""
    p = Path(path).resolve()
    base = Path(settings.data_dir).resolve()
    rel = rel_to(p, base) if str(p).startswith(str(base)) else rel_to(p, ROOT)
    return {"path": rel, "sha256": sha256_file(p)}


def write_meta(vdir: Path, meta: dict[str, Any]) -> Path:
    vdir.mkdir(parents=True, exist_ok=True)
    path = vdir / "meta.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_meta(repo: str | os.PathLike, name: str, version: int = TRITON_VERSION) -> dict[str, Any]:
    return json.loads((version_dir(repo, name, version) / "meta.json").read_text())


def read_config(repo: str | os.PathLike, name: str):
    """Parse ``<repo>/<name>/config.pbtxt`` into Triton's ModelConfig protobuf."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = (model_dir(repo, name) / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def save_state(vdir: Path, filename: str, state: dict) -> Path:
    import torch

    vdir.mkdir(parents=True, exist_ok=True)
    path = vdir / filename
    tmp = vdir / (filename + ".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
    os.replace(tmp, path)
    return path


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC, ties counting one half (:mod:`models.scores`)."""
    from models import scores

    return scores.roc_auc(y, s)


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """PR-AUC as average precision, scikit-learn's (:mod:`models.scores`)."""
    from models import scores

    return scores.average_precision(y, s)


def timer() -> "Timer":
    return Timer()


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.t0, 3)


def round_floats(xs: Iterable[float], nd: int = 6) -> list[float]:
    return [round(float(x), nd) for x in xs]


def train_main(prog: str, doc: str | None, argv: list[str] | None, train, data_path,
               extra_args=None, summary=()) -> dict:
    """The command line every model builder shares: ``--repo`` (default ``settings.triton_repo``)
    plus ``extra_args(parser)``; ``data_path(args, settings)`` is what ``train`` learns from.
    Prints one JSON line (name, version, training time, test metrics, meta keys in ``summary``)."""
    import argparse

    from streamscore.settings import Settings

    ap = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0])
    if extra_args is not None:
        extra_args(ap)
    ap.add_argument("--repo", type=Path, default=None, help="Triton model repository (default: settings.triton_repo)")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    meta = train(data_path(args, settings), args.repo or Path(settings.triton_repo), settings)
    print(json.dumps({"model": meta["model"], "version": meta["version"], "train_seconds": meta["train_seconds"],
                      "test": meta["metrics"]["test"], **{k: meta[k] for k in summary}}))
    return meta


def scratch_repo(repo: str | os.PathLike, name: str, dest: str | os.PathLike | None = None) -> Path:
    """A model repository with ``name``'s committed files only (``config.pbtxt``, ``<version>/model.py``)
    copied from ``repo`` into ``dest`` (default a new temporary directory): train there without
    touching the served artefacts. -> the repository root."""
    import shutil
    import tempfile

    root = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix=f"streamscore-{name}-"))
    shutil.copytree(model_dir(repo, name), root / name, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.pt", "*.json", "*.npy", "__pycache__", "*.tmp"))
    return root
