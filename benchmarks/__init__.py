"""fastmine's benchmark harness: ``python -m benchmarks --help``.

Times fastmine's fused ops against the ways people compute the same losses today
(vectorized PyTorch eager, the same under torch.compile, pytorch-metric-learning) and
against the physical floor (the bare X @ X.T matmul), on identical inputs, forward +
backward. See benchmarks/README.md.
"""
