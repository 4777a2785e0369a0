"""Data in and out of tasks: URL schemes, path checks, downloads."""
