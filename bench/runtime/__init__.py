"""Our runtime against transformers: CPU and GPU speed, engine throughput, where a step's time goes."""
