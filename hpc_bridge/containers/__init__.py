"""Apptainer: building the argv that runs an executor in a container (and, later, the image cache)."""
