"""The VM device stack: virtqueues, the vhost-user server, the vsock device behind
Firecracker's hybrid-vsock layout, QEMU (`QemuVM`, a `machines.base.Machine`) and the
runtime image and kernel builds."""
