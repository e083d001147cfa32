"""The ``fusd`` subcommands: one module each, registered in ``fusd_runtime.cli.COMMANDS``."""
