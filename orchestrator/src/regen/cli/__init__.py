"""The `regen` command. Subcommands import heavy packages only when they run."""
