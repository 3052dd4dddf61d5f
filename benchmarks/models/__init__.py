"""Dataset-specific models of the benchmarks (image backbones live in ``mtlagg_arch``).

Every model has an ``encoder`` (the shared parameters) and ``heads`` (a ModuleDict, one per task).
"""
