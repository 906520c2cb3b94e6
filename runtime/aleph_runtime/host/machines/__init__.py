"""What runs the init: one `Machine` life (base.py) over dev mode's container and the local
process (dev.py, the container from host/container/), QEMU (qemu.py, on vmm/qemu.py's
command line) and the test sandbox (sandbox.py, the same container on this machine's /);
shared by the tests, the benchmarks and the CLI."""
