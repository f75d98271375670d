"""Reports of a run: metrics, CSV/JSON outputs, plots, the Perfetto trace, the progress line."""
