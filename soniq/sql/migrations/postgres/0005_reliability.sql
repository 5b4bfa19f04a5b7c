-- Reliability: a worker's death is visible to PostgreSQL the moment its connection drops.
--
-- Each worker holds a session-level advisory lock, keyed lock_key, on a dedicated
-- connection of its own. A sweep that can take that lock knows the worker is gone
-- (its process died, its host closed the socket, or the server dropped it) and requeues
-- its jobs within seconds instead of after heartbeat_timeout. NULL means the worker
-- holds no such lock (its only connection goes through a transaction-mode pooler):
-- the heartbeat rule alone applies to it.
ALTER TABLE soniq_workers ADD COLUMN IF NOT EXISTS lock_key bigint;
