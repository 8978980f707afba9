"""The Indep and Graph benchmarks of the seed, on a local cluster."""
