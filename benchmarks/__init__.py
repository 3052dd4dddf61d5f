"""The benchmark harness of mtlagg: datasets, models, metrics, scores and the ``mtlagg-bench`` CLI."""
