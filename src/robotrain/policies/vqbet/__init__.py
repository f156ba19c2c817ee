"""vqbet policy."""
