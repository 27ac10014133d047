"""Training code of the three Triton models (fraud, recommender, pricing).

``python -m models`` builds all three; ``python -m models.fraud`` / ``.recommender`` /
``.pricing`` build one. Artefacts go to ``<settings.triton_repo>/<model>/1/`` beside the
committed ``model.py`` (which holds each network's definition); see triton_repo/README.md.
"""

MODEL_NAMES = ("fraud", "recommender", "pricing")
