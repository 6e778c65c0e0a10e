"""Random-weight builders and the official reference formulation, for tests and benchmarks."""
