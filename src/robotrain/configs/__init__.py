"""Configuration dataclasses and the command-line parser."""
