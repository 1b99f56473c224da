"""The file sensor package: inotify watch tree, reconciling rescans, channels, mounts
and fanotify process attribution. `create` is the registry's factory (`files`);
`inventory_rescan_job` is the scheduler's periodic reconciling rescan."""

from agent.sensors.files.sensor import FileSensor, create, inventory_rescan_job

__all__ = ["FileSensor", "create", "inventory_rescan_job"]
