"""What runs the init: one `Machine` life (base.py) over the dev-mode process (dev.py),
QEMU (qemu.py, on vmm/qemu.py's command line) and the test sandbox (sandbox.py), dev.py and
sandbox.py chrooting into overlay.py's private root; shared by the tests, the benchmarks and the CLI."""
