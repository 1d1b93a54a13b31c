"""zonefarm control plane: federation registry and task farm."""

__version__ = "0.1.0"
