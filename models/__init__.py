"""Training code of the three Triton models (fraud, recommender, pricing).

``python -m models`` builds all three; ``python -m models.fraud`` / ``.recommender`` /
``.pricing`` build one. ``python -m models.evaluate`` compares them with baselines and writes
docs/models_results.json + docs/MODELS.md (``models.report``). Artefacts go to ``<settings.triton_repo>/<model>/1/`` beside the
committed ``model.py`` (which holds each network's definition); see triton_repo/README.md.
"""

MODEL_NAMES = ("fraud", "recommender", "pricing")
