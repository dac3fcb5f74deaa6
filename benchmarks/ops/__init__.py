"""One module per benchmarked op, each defining ``OP = OpBench(...)`` (benchmarks.registry)."""
