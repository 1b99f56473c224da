"""Where a file is: the channel of a path, from the mount table, sysfs and config.

A path's channel comes from the most specific thing that contains it: a configured
`files.removable` or `files.cloud_sync` path, a folder whose name is a known
cloud-sync client's (Nutstore/坚果云, 百度网盘, OneDrive, Dropbox, Google Drive,
Seafile, Synology Drive), or the mount it lives on — a network file system
(`network_share`) or a removable block device (`removable`, from
`/sys/dev/block/M:m/.../removable` or a USB parent). Anything else is `local`.
`parse_mountinfo` is pure; `ChannelMap` caches one answer per directory and is
rebuilt whenever the mount table changes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.events import Channel

NETWORK_FSTYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "sshfs",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "davfs",
        "9p.net",
        "ncpfs",
        "coda",
    }
)
# fuse file systems that are local (a bind, an overlay, a portal), not network shares
LOCAL_FUSE = frozenset(
    {
        "lxcfs",
        "portal",
        "doc",
        "snapfuse",
        "squashfuse",
        "fuse-overlayfs",
        "bindfs",
        "gocryptfs",
        "encfs",
        "cryfs",
        "appimage",
        "ntfs-3g",
        "ntfs",
        "exfat",
    }
)
# folder names that sync clients create (exact, or followed by " - Org" / " (Personal)")
CLOUD_SYNC_NAMES = (
    "Nutstore",
    "坚果云",
    "我的坚果云",
    "BaiduNetdisk",
    "BaiduNetdiskDownload",
    "BaiduNetdiskWorkspace",
    "百度网盘",
    "百度云同步盘",
    "OneDrive",
    "Dropbox",
    "Google Drive",
    "GoogleDrive",
    "My Drive",
    "Seafile",
    "SynologyDrive",
    "Synology Drive",
)
_CLOUD_RX = re.compile(
    "^(?:" + "|".join(re.escape(n) for n in CLOUD_SYNC_NAMES) + r")(?:[ ._-].*)?\Z", re.DOTALL
)
_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    mount_id: int
    device: str  # "major:minor"
    mount_point: str  # fsdecode()d, escapes undone
    fstype: str
    source: str


def _unescape(field: bytes) -> str:
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field))


def parse_mountinfo(data: bytes) -> list[Mount]:
    """Parse /proc/self/mountinfo; malformed lines are skipped."""
    mounts: list[Mount] = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    device=fields[2].decode("ascii"),
                    mount_point=_unescape(fields[4]),
                    fstype=fields[sep + 1].decode("utf-8", "replace"),
                    source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
                )
            )
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
    return mounts


def read_mountinfo(path: str = "/proc/self/mountinfo") -> bytes:
    with open(path, "rb") as f:
        return f.read()


def is_network_fstype(fstype: str) -> bool:
    if fstype in NETWORK_FSTYPES:
        return True
    if fstype.startswith("fuse."):
        return fstype[5:] not in LOCAL_FUSE
    return False


def is_removable_device(device: str, sys_root: str = "/sys") -> bool:
    """True for a block device the kernel marks removable, or one behind a USB bus."""
    link = os.path.join(sys_root, "dev", "block", device)
    try:
        real = os.path.realpath(link)
    except OSError:
        return False
    if not os.path.exists(real):
        return False
    if "/usb" in real:
        return True
    for d in (real, os.path.dirname(real)):  # the disk, or the disk of a partition
        try:
            with open(os.path.join(d, "removable"), "rb") as f:
                if f.read(1) == b"1":
                    return True
        except OSError:
            continue
    return False


def is_cloud_sync_name(name: str) -> bool:
    return _CLOUD_RX.match(name) is not None


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/") or prefix == "/"


def mount_channel(m: Mount, sys_root: str = "/sys") -> Channel:
    if is_network_fstype(m.fstype):
        return Channel.NETWORK_SHARE
    if m.device.split(":")[0] != "0" and is_removable_device(m.device, sys_root):
        return Channel.REMOVABLE
    return Channel.LOCAL


class ChannelMap:
    """path -> channel, for one snapshot of the mount table and the config."""

    def __init__(
        self,
        mounts: Iterable[Mount],
        removable: Iterable[Path | str] = (),
        cloud_sync: Iterable[Path | str] = (),
        sys_root: str = "/sys",
    ) -> None:
        self.mounts = list(mounts)
        # (prefix, channel), most specific (longest) first; config beats detection on ties
        rules: list[tuple[str, int, Channel]] = []
        for m in self.mounts:
            # a local mount adds nothing: under a configured path it takes that channel
            ch = mount_channel(m, sys_root)
            if ch != Channel.LOCAL:
                rules.append((m.mount_point, 0, ch))
        for p in removable:
            rules.append((os.path.normpath(os.fsdecode(p)), 1, Channel.REMOVABLE))
        for p in cloud_sync:
            rules.append((os.path.normpath(os.fsdecode(p)), 1, Channel.CLOUD_SYNC))
        rules.sort(key=lambda r: (len(r[0]), r[1]), reverse=True)
        self._rules = [(p, c) for p, _, c in rules]
        self._cache: dict[str, Channel] = {}

    def channel_of_dir(self, directory: str) -> Channel:
        ch = self._cache.get(directory)
        if ch is not None:
            return ch
        ch = Channel.LOCAL
        best = -1
        for prefix, c in self._rules:
            if _under(directory, prefix):
                ch, best = c, len(prefix)
                break
        # a cloud-sync folder deeper than the matched prefix wins over it
        parts = directory.split("/")
        depth = 0
        for part in parts:
            depth += len(part) + 1
            if depth - 1 > best and part and is_cloud_sync_name(part):
                ch = Channel.CLOUD_SYNC
                break
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[directory] = ch
        return ch

    def channel(self, path: str) -> Channel:
        return self.channel_of_dir(os.path.dirname(path) or "/")

    def mount_of(self, path: str) -> Mount | None:
        best: Mount | None = None
        for m in self.mounts:
            if _under(path, m.mount_point) and (
                best is None or len(m.mount_point) >= len(best.mount_point)
            ):
                best = m
        return best

    def followed_mounts(self) -> list[Mount]:
        """Mounts the sensor watches by itself: removable media and network shares."""
        return [m for m in self.mounts if self.channel_of_dir(m.mount_point) != Channel.LOCAL]
