"""The toolkit's adapters to the outside world; they know nothing of the tools built on them (an import-linter
contract keeps them from importing `ops.backup`, `ops.migrate` or the CLI)."""
