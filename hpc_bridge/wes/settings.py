"""Site settings of the WES API (`wes:` in the site config).

Kept apart from the service so the site config can embed `WesSettings` without importing Flask or
the engine. `runs_root` holds one directory per run (attachments, the engine's request, logs,
outputs); TES tasks read and write there, so it must lie inside a storage data root.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hpc_bridge.staging.paths import plain_path

MiB = 1024**2
GiB = 1024**3


class WesSettings(BaseModel):
    """`runs_root` unset: `<first data root>/runs`. Attachment caps apply per file and per run (the
    whole request is also capped by `limits.max_request_bytes`). `max_parallel_runs` engine
    processes run at once; further runs wait QUEUED. `https_workflows`: a `workflow_url` may be
    an https URL, fetched once at submission with the caps and address checks of `storage.http`
    (the document must then be self-contained, e.g. `cwltool --pack`; a zip is run as a crate).
    `crate_outputs`: a run's crate references its output files by URL, or (`include`) holds them,
    up to `crate_include_max_bytes` in all (the rest stay referenced, and the crate says so)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runs_root: Path | None = None
    max_attachment_bytes: Annotated[int, Field(ge=1)] = 64 * MiB
    max_attachments_bytes: Annotated[int, Field(ge=1)] = 256 * MiB
    max_attachments: Annotated[int, Field(ge=1, le=10000)] = 1000
    max_params_bytes: Annotated[int, Field(ge=1024)] = 8 * MiB
    max_parallel_runs: Annotated[int, Field(ge=1, le=256)] = 4
    https_workflows: bool = True
    https_timeout: Annotated[float, Field(gt=0, le=600)] = 60.0
    trs_hosts: list[str] = Field(default_factory=list)  # TRS registries workflow_url may name (host[:port])
    # Run directories are removed this long after their run ended (the record stays); None keeps them.
    retention_hours: Annotated[float, Field(ge=0)] | None = None
    retention_keep_outputs: bool = False  # True: retention leaves a run directory's outputs/
    crate_outputs: Literal["reference", "include"] = "reference"
    crate_include_max_bytes: Annotated[int, Field(ge=0)] = GiB
    # Seconds between the supervisor's looks at the runs table (it is also woken by the API).
    poll_interval: Annotated[float, Field(gt=0)] = 1.0
    # After SIGTERM (cancel), how long the engine may take to cancel its tasks before SIGKILL.
    cancel_grace: Annotated[float, Field(gt=0)] = 60.0
    # A run whose engine was re-launched this often after restarts of the service fails instead.
    max_relaunches: Annotated[int, Field(ge=0)] = 5

    @field_validator("runs_root")
    @classmethod
    def _plain_runs_root(cls, value: Path | None) -> Path | None:
        """Run directories become bind paths and file:// inputs of TES tasks: plain characters."""
        return None if value is None else plain_path(value)

    def root(self, data_roots: Sequence[Path]) -> Path | None:
        """The effective runs root, or None when WES has nowhere to put runs (no data root)."""
        if self.runs_root is not None:
            return self.runs_root
        return data_roots[0] / "runs" if data_roots else None

    def check(self, data_roots: Sequence[Path]) -> None:
        """Raise ValueError unless the runs root lies inside a data root (symlinks resolved)."""
        root = self.root(data_roots)
        if root is None:
            return
        real = os.path.realpath(root)
        for data_root in data_roots:
            real_data = os.path.realpath(data_root)
            if os.path.commonpath([real, real_data]) == real_data and real != real_data:
                return
        raise ValueError(f"wes.runs_root ({root}) must lie inside one of storage.data_roots "
                         f"({', '.join(map(str, data_roots)) or 'none configured'}): the workflow's "
                         "TES tasks read and write there")
