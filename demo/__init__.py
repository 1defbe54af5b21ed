"""`make demo`: the flywheel run locally, step by step (`python -m demo`)."""
