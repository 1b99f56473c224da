"""The file sensor's pure parts: kernel record parsers, mount table, /proc parsers."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.events import Channel
from agent.sensors.files import _inotify as I
from agent.sensors.files import fanotify as F
from agent.sensors.files.channels import (
    ChannelMap,
    Mount,
    is_cloud_sync_name,
    is_network_fstype,
    is_removable_device,
    parse_mountinfo,
)
from agent.sensors.files.process import parse_cmdline, parse_status

# --- inotify records ----------------------------------------------------------------


def _inotify_record(wd: int, mask: int, cookie: int, name: bytes, pad: int) -> bytes:
    body = name + b"\0" * pad if name or pad else b""
    return struct.pack("iIII", wd, mask, cookie, len(body)) + body


@given(
    st.lists(
        st.tuples(
            st.integers(-1, 2**31 - 1),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=255).map(lambda b: b.replace(b"\0", b"_")),
            st.integers(0, 16),
        ),
        max_size=20,
    )
)
def test_inotify_records_round_trip(records: list[tuple[int, int, int, bytes, int]]) -> None:
    data = b"".join(_inotify_record(*r) for r in records)
    got = I.parse_events(data)
    assert [(e.wd, e.mask, e.cookie, e.name) for e in got] == [r[:4] for r in records]


@given(st.binary(max_size=400))
def test_inotify_parser_never_crashes_on_garbage(data: bytes) -> None:
    for e in I.parse_events(data):
        assert b"\0" not in e.name


def test_inotify_overflow_record_is_kept() -> None:
    data = _inotify_record(-1, I.IN_Q_OVERFLOW, 0, b"", 0)
    (ev,) = I.parse_events(data)
    assert ev.wd == -1 and ev.mask & I.IN_Q_OVERFLOW


# --- fanotify records -----------------------------------------------------------------


def _fan_record(mask: int, pid: int, fsid: tuple[int, int], handle: bytes, name: bytes) -> bytes:
    fh = struct.pack("Ii", len(handle), 1) + handle
    info_body = struct.pack("ii", *fsid) + fh + name + b"\0"
    info_len = 4 + len(info_body)
    info_len += (-info_len) % 4
    info = struct.pack("BBH", F.FAN_EVENT_INFO_TYPE_DFID_NAME, 0, info_len) + info_body
    info += b"\0" * (info_len - len(info))
    meta = struct.pack("IBBHQii", 24 + len(info), 3, 0, 24, mask, -1, pid)
    return meta + info


@given(
    st.lists(
        st.tuples(
            st.sampled_from([F.FAN_CLOSE_WRITE, F.FAN_OPEN]),
            st.integers(1, 2**22),
            st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)),
            st.binary(min_size=1, max_size=64),
            st.binary(min_size=1, max_size=255).map(lambda b: b.replace(b"\0", b"_")),
        ),
        max_size=10,
    )
)
def test_fanotify_records_round_trip(records: list) -> None:
    data = b"".join(_fan_record(*r) for r in records)
    got = F.parse_events(data)
    assert len(got) == len(records)
    for ev, (mask, pid, fsid, handle, name) in zip(got, records):
        assert (ev.mask, ev.pid, ev.name) == (mask, pid, name)
        assert ev.fsid == F.fsid_of(*fsid)
        assert ev.handle[8:] == handle


@given(st.binary(max_size=600))
def test_fanotify_parser_never_crashes_on_garbage(data: bytes) -> None:
    # fd fields in garbage could name a real fd: make them -1 so nothing is closed
    F.parse_events(data.replace(b"\0", b"\xff"))


def test_fsid_matches_statvfs_layout() -> None:
    assert F.fsid_of(-392498445, -1450580536) == 0xA989E5C8E89AF2F3


# --- mount table and channels ---------------------------------------------------------

MOUNTINFO = (
    b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    b"40 27 0:50 / /mnt/share rw - nfs4 srv:/export rw\n"
    b"41 27 0:51 / /mnt/smb rw shared:5 - cifs //srv/x rw\n"
    b"42 27 0:52 / /home/u/remote rw - fuse.sshfs u@h:/ rw\n"
    b"43 27 0:53 / /sys/fs/lxc rw - fuse.lxcfs lxcfs rw\n"
    b"44 27 8:17 / /media/u/KINGSTON\\040USB rw - vfat /dev/sdb1 rw\n"
    b"garbage line\n"
)


def test_parse_mountinfo_fields_and_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts][-1] == "/media/u/KINGSTON USB"
    assert mounts[1] == Mount(40, "0:50", "/mnt/share", "nfs4", "srv:/export")
    assert len(mounts) == 6


@given(st.binary(max_size=500))
def test_parse_mountinfo_never_crashes(data: bytes) -> None:
    parse_mountinfo(data)


def test_network_fstypes() -> None:
    assert all(is_network_fstype(t) for t in ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs"))
    assert not any(is_network_fstype(t) for t in ("ext4", "tmpfs", "fuse.lxcfs", "vfat"))


def test_cloud_sync_names() -> None:
    for name in ("Nutstore", "坚果云", "百度网盘", "OneDrive - Contoso", "Dropbox (Personal)"):
        assert is_cloud_sync_name(name), name
    for name in ("Dropboxes", "OneDriveBackup", "src", "drive"):
        assert not is_cloud_sync_name(name), name


def _fake_sysfs(tmp_path: Path) -> Path:
    sys_root = tmp_path / "sys"
    usb = sys_root / "devices/pci0000:00/usb1/1-1/host6/block/sdb"
    (usb / "sdb1").mkdir(parents=True)
    (usb / "removable").write_text("0\n")
    sd = sys_root / "devices/pci0000:00/ata1/block/sdc"
    (sd / "sdc1").mkdir(parents=True)
    (sd / "removable").write_text("1\n")
    fixed = sys_root / "devices/virtio/block/vda"
    fixed.mkdir(parents=True)
    (fixed / "removable").write_text("0\n")
    (sys_root / "dev/block").mkdir(parents=True)
    os.symlink(usb / "sdb1", sys_root / "dev/block/8:17")
    os.symlink(sd / "sdc1", sys_root / "dev/block/8:33")
    os.symlink(fixed, sys_root / "dev/block/254:0")
    return sys_root


def test_removable_detection_from_sysfs(tmp_path: Path) -> None:
    sys_root = str(_fake_sysfs(tmp_path))
    assert is_removable_device("8:17", sys_root)  # behind a USB bus
    assert is_removable_device("8:33", sys_root)  # the disk says removable
    assert not is_removable_device("254:0", sys_root)
    assert not is_removable_device("9:9", sys_root)


def test_channel_map(tmp_path: Path) -> None:
    cmap = ChannelMap(
        parse_mountinfo(MOUNTINFO),
        removable=["/srv/media"],
        cloud_sync=["/data/sync"],
        sys_root=str(_fake_sysfs(tmp_path)),
    )
    assert cmap.channel("/home/u/file.txt") == Channel.LOCAL
    assert cmap.channel("/mnt/share/a/b.bin") == Channel.NETWORK_SHARE
    assert cmap.channel("/mnt/smb/x") == Channel.NETWORK_SHARE
    assert cmap.channel("/home/u/remote/x") == Channel.NETWORK_SHARE
    assert cmap.channel("/media/u/KINGSTON USB/model.safetensors") == Channel.REMOVABLE
    assert cmap.channel("/srv/media/stick/x") == Channel.REMOVABLE
    assert cmap.channel("/data/sync/x") == Channel.CLOUD_SYNC
    assert cmap.channel("/home/u/Nutstore/a/x.py") == Channel.CLOUD_SYNC
    assert cmap.channel("/home/u/百度网盘/x.py") == Channel.CLOUD_SYNC
    assert cmap.channel("/mnt/share/Dropbox/x") == Channel.CLOUD_SYNC  # deeper wins
    assert cmap.channel("/sys/fs/lxc/x") == Channel.LOCAL
    assert [m.mount_point for m in cmap.followed_mounts()] == [
        "/mnt/share",
        "/mnt/smb",
        "/home/u/remote",
        "/media/u/KINGSTON USB",
    ]


# --- /proc parsing ------------------------------------------------------------------


def test_parse_status_and_cmdline() -> None:
    status = b"Name:\tcp\nPPid:\t41\nUid:\t1000\t1000\t1000\t1000\n"
    assert parse_status(status) == (1000, 41)
    assert parse_status(b"Uid:\nPPid: x\n") == (None, None)
    assert parse_cmdline(b"cp\0-r\0a b\0") == "cp -r a b"


@given(st.binary(max_size=300))
def test_proc_parsers_never_crash(data: bytes) -> None:
    parse_status(data)
    parse_cmdline(data)
