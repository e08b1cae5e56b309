"""The `ddrnet` console entry point: one command, thin subcommands that delegate to the packages."""
