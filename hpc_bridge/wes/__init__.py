"""GA4GH WES 1.1 on top of the TES service: runs of CWL workflows, each driven by one engine
process (`python -m hpc_bridge.cwl`) that turns the workflow's steps into TES tasks."""

# The RunLog's `outputs` entry for an ended run's crate. A CWL output name is the last segment of
# its id, so it never holds a "/": this key cannot collide with one of the workflow's outputs.
CRATE_OUTPUT = "hpc-bridge/ro-crate"
