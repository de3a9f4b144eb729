"""The operations toolkit that ships with the package (the app never imports it).

- `errors`: the one error model (`OpsError(message, hint, exit_code)`) and the one exit-code table;
- `sources`: `DataSources` (database, Redis, uploads) and the only URL code;
- `adapters/`: the outside world — hosts (`transport/`, `rsync`), PostgreSQL, Redis, files, Telegram, nginx;
- `backup/`: the one backup format (create, verify, restore);
- `migrate/`: `timetodo migrate`, one module per step.
"""
