"""Training and evaluation of DDRNet classifiers (the zoo recipe, data-parallel under msrun), and the
export stage (``training.export``) that turns a run into a verified model repository version."""
