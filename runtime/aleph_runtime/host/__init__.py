"""Host-side tools: run on a workstation or a node, never inside the VM."""
