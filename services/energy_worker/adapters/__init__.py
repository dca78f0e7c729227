"""The world outside the core: Redis, PostgreSQL (its SQL in sql/), the work queue and
its Lua scripts, outages, logging, settings. Imports the core only."""
