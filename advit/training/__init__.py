"""Training: the configuration and the loop, the run folder, presets and background jobs."""
