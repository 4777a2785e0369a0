"""The CWL engine: cwltool as a library, each CommandLineTool job a TES task of this service.

`python -m hpc_bridge.cwl --config SITE.yaml --run-dir DIR` runs one workflow run (see engine.py);
`validate.validate_workflow` checks a workflow (and its inputs) at submission time.
"""

from __future__ import annotations

# Exit codes of the engine process, read by the WES supervisor.
EXIT_COMPLETE = 0
EXIT_EXECUTOR_ERROR = 3
EXIT_SYSTEM_ERROR = 4
EXIT_CANCELED = 5
