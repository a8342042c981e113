"""lud — Logits Uncertainty Distillation and logit-based knowledge-distillation baselines."""

__version__ = "0.1.0"
