"""Grammar libraries compared, and the cost of constrained decoding in our engine."""
