"""`python -m hpc_bridge.cwl --config SITE.yaml --run-dir DIR`: one workflow run (see engine.py)."""

import sys

from hpc_bridge.cwl.engine import main

sys.exit(main())
