"""Many agents on one runtime."""
