# Triton Inference Server for streamscore's python-backend models.
#
# NVIDIA's image ships the python backend, but its Python (3.10 in 24.10) has neither torch
# nor numpy, and every model in triton_repo/*/1/model.py imports both (self-contained: torch
# + numpy only). 24.10 is tritonserver 2.51, the same server the local stack runs
# (nvidia-pytriton 0.7.0), so model configs behave the same locally and here.
# Models must therefore stay Python 3.10-compatible.
#
# TORCH_VERSION defaults to the project's pin (pyproject.toml) so the state dicts trained
# locally load with the same torch. The PyPI wheel bundles its CUDA runtime; the host driver
# must be new enough for it (check `nvidia-smi` against the wheel's CUDA version), or build
# with e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple

# numpy: the project's pin (numpy<2, which the python backend stub of the local stack needs too).
RUN python3 -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}" "numpy==1.26.4"

# The model repository is mounted read-only at /models by docker-compose.yml.
CMD ["tritonserver", "--model-repository=/models", "--disable-auto-complete-config", "--strict-readiness=true"]
