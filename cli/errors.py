"""The one exception type subcommand shells raise for a user mistake (bad path, bad option value)."""


class CliError(Exception):
    """Printed by `ddrnet` as one line naming the problem; exit status 2; never a traceback."""
