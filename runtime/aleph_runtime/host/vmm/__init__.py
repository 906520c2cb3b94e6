"""The VM device stack, below the machines: virtqueues, the vhost-user server, the vsock
device behind Firecracker's hybrid-vsock layout, QEMU's command line (machines/qemu.py runs
it) and the runtime image and kernel builds. Nothing here imports machines/."""
