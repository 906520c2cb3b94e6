"""The legacy `aleph_client` API (aleph-client 0.4.x-0.5.x) on top of aleph-sdk-python.

The aleph docs and aleph-vm's tutorials show programs importing `aleph_client.asynchronous`,
`aleph_client.chains.remote`, `aleph_client.vm.cache`..., modules that only exist in
aleph-client 0.4-0.5, which cannot be installed beside aleph-sdk-python 2, aleph-message 1
and pydantic 2. These modules keep those programs running unchanged: each function takes
the legacy keyword arguments and calls the SDK; results are the SDK's models, which carry
the attributes legacy code reads. What has no SDK equivalent raises `LegacyAPIError`
naming the replacement.

The runtime puts this directory LAST on sys.path: a program that ships its own
aleph_client (in its code or in /opt/packages) gets its own.
"""

__version__ = "0.5.1+aleph-runtime"
