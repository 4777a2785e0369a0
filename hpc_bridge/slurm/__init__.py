"""Slurm: the CLI client, the Slurm -> TES state mapping, batch script rendering and the job monitor."""
