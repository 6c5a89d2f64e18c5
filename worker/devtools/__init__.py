"""Development tooling, not in the package: the local stack, the load
generator, the demo, the benchmark."""
