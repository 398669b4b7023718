"""ablab: studies of quality-aware detectors on Ray Tune x Ray Train, tracked in MLflow."""
