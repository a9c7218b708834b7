"""Spark logic of the pipeline (cleaning, features, models, metrics), free of orchestration."""
