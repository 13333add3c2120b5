"""The `dreamer` command line: one module per command group (dreamer.cli.main assembles them)."""
