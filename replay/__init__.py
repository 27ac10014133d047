"""Replay real datasets into the input topics: readers (:mod:`replay.sources`), the
timeline merge and named scenarios (:mod:`replay.scenario`), the Kafka publisher
(:mod:`replay.publish`) and the CLI (``python -m replay``)."""
