"""Published single-task baselines and per-method tables (JSON), read by :mod:`benchmarks.scores`."""
