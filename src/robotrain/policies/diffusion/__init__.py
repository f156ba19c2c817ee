"""diffusion policy."""
