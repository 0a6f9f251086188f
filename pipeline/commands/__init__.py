"""Subcommands of `mining-mapper`, one module each.

Every module here defines `NAME`, `HELP`, `configure(parser)` and `run(args) -> int`, and is found by
`pipeline.cli` without being listed anywhere. Optional: `ADD_HELP = False` (the command documents its
own flags), `USES_TENSORFLOW = True` (the CLI loads TensorFlow first, its start-up chatter filtered).
Flags are spelled with hyphens (underscores are accepted too); -v / -q are added to every command.
Heavy imports (TensorFlow, Beam, Earth Engine) belong inside `run`, so that `mining-mapper --help`
stays fast.
"""
