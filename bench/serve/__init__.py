"""Serving through HTTP: `jamba-stack serve` under load, beside the engine driven in-process."""
