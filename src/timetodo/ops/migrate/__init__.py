"""`timetodo migrate`: move a live deployment to a new host, one module per step of the seed's list of scripts.

| step | module | seed script |
| --- | --- | --- |
| preflight | `preflight` | (checks of run_migration.sh) |
| backup | `backup` | backup_render_data.sh |
| prepare | `prepare/` | prepare_selectel_server.sh |
| deploy | `deploy/` | deploy_to_selectel.sh |
| sync | `sync` | run_migration.sh (first copy) |
| cutover | `cutover` | run_migration.sh (freeze, final copy, switch) |
| validate | `validate/` | validate_migration.sh |
| rollback | `rollback/` | rollback.sh |

Each has `plan(ctx)` and `run(ctx)`; `run` (the module) orders them, records each in the state file and makes
`migrate plan` out of their `plan()`s. Shared: `config` (migration.toml, paths resolved once), `context`, `state`
(typed facts), `journal`, `report`, `data` (row counts, upload places), `estimate`, `switch` (DNS, webhook).
"""
