"""What runs the init: one `Machine` life (base.py) over dev mode's container and the local
process (dev.py, the container from host/container/), QEMU (qemu.py, on vmm/qemu.py's
command line) and the test sandbox (sandbox.py, chrooting into overlay.py's private root);
shared by the tests, the benchmarks and the CLI."""
