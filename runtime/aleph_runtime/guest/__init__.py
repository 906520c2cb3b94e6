"""The init's side: everything that runs inside the VM (PID 1), on the image's Python.

main.py reads every knob once (settings.py), listens on port 52 and sends the ready
signal (ready.py); serve.py then builds the `Init` (init.py), which talks to the host
over transport.py in protocol.py's wire format."""
