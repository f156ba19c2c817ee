"""smolvla policy."""
