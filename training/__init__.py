"""Training, evaluation and export of DDRNet classifiers."""
