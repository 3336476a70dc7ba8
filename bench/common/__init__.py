"""What several benches share: result paths, the CPU's view, GPU model building and timing, tables,
percentiles, kernel families of a profile."""
