"""robotrain: train robot policies from demonstrations, compatible with LeRobot's CLI and files."""

__version__ = "0.1.0.dev0"
