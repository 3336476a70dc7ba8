"""Benchmarks and checks against references, by subject; each entry point runs as a module from the
repository root (`python -m bench.runtime.cpu --quick`). bench/README.md lists them."""
