"""Correctness checks that are not benchmarks: engine paths and the tensor-parallel engine against a reference."""
