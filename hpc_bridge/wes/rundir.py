"""Who a run's engine runs as, and handing the run's directory to that Unix user when the service
runs as root (a development machine; on a site the root helper does the same, see runas/helper.py).

Engines are the user's code (CWL expressions run in them): never root, never the service account.

The API writes the attachments and request.json as the service; the engine, the user's code, then
owns the directory alone (0700). The walk is the helper's: every entry opened with O_NOFOLLOW from
its parent's descriptor and checked before it is chowned, so nothing swapped in is ever touched.
A directory the user already owns (a relaunch) is left as it is: whatever is inside is theirs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hpc_bridge.config import SiteConfig
from hpc_bridge.runas.helper import hand_over

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def hand_over_run_dir(run_dir: Path, user: Any) -> None:
    """`user`: the passwd entry of the engine's user."""
    fd = os.open(run_dir, _DIR_FLAGS)
    try:
        owner = os.fstat(fd).st_uid
        if owner == os.geteuid():
            hand_over(fd, user, owner, str(run_dir))
        elif owner != user.pw_uid:
            raise PermissionError(f"{run_dir} is owned by uid {owner}, neither the service nor "
                                  f"{user.pw_name}")
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def engine_launch_refusal(config: SiteConfig, run_as: str | None) -> str | None:
    """Why no engine could start for a run whose tasks run as `run_as` (None: it can). Without a
    mapped user, only a root service (dev) has a job user of its own to start engines as."""
    if run_as is not None:
        return None
    if os.geteuid() == 0 and config.slurm.submit_as:
        return None
    return ("workflow engines run as the run's own Unix user, never as the service account, and "
            "this site maps no users: use run_as mode 'table' or 'claim' (or, on a development "
            "machine, run the service as root with slurm.submit_as)")
