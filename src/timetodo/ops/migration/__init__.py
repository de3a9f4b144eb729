"""`timetodo migrate`: move a live deployment to a new host with nothing lost (see README "Migrating to a new host")."""
