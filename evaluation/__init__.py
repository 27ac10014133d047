"""Offline experiments of the online-learning parts (issue 7), each a ``python -m`` entry point.

* ``python -m evaluation.drift``: fraud drift replay (static model vs River vs the served blend);
* ``python -m evaluation.pricing_sim``: the pricing bandit against static and oracle prices;
* ``python -m evaluation.recs_online``: co-visitation counts blended with the Triton recommender.

Each is seeded and deterministic, reads ``../shared/data`` (``STREAMSCORE_DATA_DIR``), writes its
plot into ``docs/img/`` and its section of ``docs/ONLINE.md`` (between generated markers).
"""
