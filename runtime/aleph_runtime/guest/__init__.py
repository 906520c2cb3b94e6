"""The init's side: everything that runs inside the VM (PID 1), on the image's Python.

main.py reads every knob once (settings.py) and builds the `Init` (init.py), which
talks to the host over transport.py in protocol.py's wire format."""
