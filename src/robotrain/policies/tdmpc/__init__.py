"""tdmpc policy."""
