"""hpc-bridge: GA4GH TES/WES on Slurm, with executors running in Apptainer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hpc-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
