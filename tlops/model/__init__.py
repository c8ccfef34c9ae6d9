"""The pure model domain: backbone building (Keras), runtime set-up, the two-phase training,
metrics and plots. Talks to no MLflow, git or DVC."""
