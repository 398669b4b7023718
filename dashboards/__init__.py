"""Plots and HTML reports built from a study's MLflow results (``ablab report``)."""
