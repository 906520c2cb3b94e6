"""The errors the host tools raise for the user: machines raise them, the node and the CLI
report them. A leaf module, so machines need not import node/ (which imports machines)."""

from __future__ import annotations


class NodeError(RuntimeError):
    """Something the user can fix: a bad PATH, option or volume; the message says what."""


class SetupError(NodeError):
    """This machine lacks something (a tool, the image, QEMU support); the message says what."""
