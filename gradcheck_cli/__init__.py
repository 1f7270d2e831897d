"""xentcheck: verify softmax cross-entropy losses and their gradients."""

__version__ = "0.1.0"
