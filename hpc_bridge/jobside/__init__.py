"""Code that runs inside the Slurm job on the compute node, as the job user: stdlib only, no daemon imports."""
