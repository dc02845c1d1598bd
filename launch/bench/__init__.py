"""Measurement harnesses beside the library: the JAX step against a PyTorch rendering of the
reference, compile options, profiles. Run them as modules from the repository root, e.g.
`python -m launch.bench.benchmark --sections=distill`; docs/performance.md has the tables."""
