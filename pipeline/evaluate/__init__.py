"""Evaluating LOSO runs: metrics, figures, one run's reports folder (`run`), the experiment's table (`report`)."""
