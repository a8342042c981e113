"""Experiment tooling on top of the trainer: ``lud bench`` (methods × seeds tables), ``lud tune``
(equal-budget tuning on the validation split), the parallel run scheduler, ``lud report`` (plots and
pages) and calibration/evaluation of finished runs. Imports the training layer, never the CLI."""
