"""aleph-runtime: the init that runs inside aleph.im program VMs, and its host-side tools.

`aleph_runtime.protocol` and `aleph_runtime.guest` run inside the VM on Debian 12's
Python 3.11 and never import `aleph_runtime.host`.
"""

__version__ = "0.1.0"
