"""GA4GH WES 1.1 on top of the TES service: runs of CWL workflows, each driven by one engine
process (`python -m hpc_bridge.cwl`) that turns the workflow's steps into TES tasks."""
