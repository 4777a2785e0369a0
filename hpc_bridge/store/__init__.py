"""SQLite state through sqlite-utils: the single source of truth for tasks and their history."""

from hpc_bridge.store.db import Store
from hpc_bridge.store.tasks import TaskFilter, TaskRow

__all__ = ["Store", "TaskFilter", "TaskRow"]
