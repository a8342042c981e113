"""lud — Logits Uncertainty Distillation and logit-based knowledge-distillation baselines."""

#: The package version, written in this one place (pyproject.toml reads it). Policy: a change of
#: any default — a loss's resolved parameters (pinned by tests/fixtures/loss_defaults.json), a
#: packaged config — bumps it, and CHANGELOG.md says what changed.
__version__ = "0.3.0"
