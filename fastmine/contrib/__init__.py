"""Adapters to other libraries. Each submodule imports its library only when imported
itself (``import fastmine.contrib.pml`` needs pytorch-metric-learning; ``import fastmine``
never does)."""
