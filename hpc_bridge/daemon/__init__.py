"""The daemon: one loop per database that turns queued tasks into Slurm jobs and jobs into task states.

`loop.Daemon` takes one `squeue` snapshot per cycle and hands it to its parts: `canceller` (cancels the
user asked for), `monitor` (status + record -> state, pure `assess`), `submitter` (plan, work area,
sbatch; packing) with `stager` (images, downloads), and on an interval `janitor` (work-area retention).
`launcher` is the seam between jobs of the service's user and jobs of a task's own Unix user.
"""

from hpc_bridge.daemon.jobfiles import JobFileRefused, read_record, read_tail
from hpc_bridge.daemon.lock import DaemonLock
from hpc_bridge.daemon.loop import Daemon

__all__ = ["Daemon", "DaemonLock", "JobFileRefused", "read_record", "read_tail"]
