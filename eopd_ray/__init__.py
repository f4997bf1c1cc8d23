"""eopd-ray: Ray-native asynchronous Entropy-Aware On-Policy Distillation of language models."""

__version__ = "0.1.0"
