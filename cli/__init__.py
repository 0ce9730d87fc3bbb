"""Click commands of the `vsr` tool, one module per command (installed as vsr.cli)."""
