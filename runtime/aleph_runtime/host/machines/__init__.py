"""What runs the init: one `Machine` life (base.py) over the dev-mode process (dev.py),
QEMU (qemu.py, over vmm/qemu.py) and the test sandbox (sandbox.py), shared by the tests,
the benchmarks and the CLI."""
