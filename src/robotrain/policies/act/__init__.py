"""act policy."""
