"""The local node `aleph-runtime run` composes: program inference, volumes, `LocalNode`
and the CLI."""
