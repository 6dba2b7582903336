-- Verified weights: every version's weight file has the sha256 of the bytes written stored
-- with its row (checked on every load), and a version whose file is unreadable, damaged or
-- another database's is marked `corrupt` (reason says why). SQLite cannot change a CHECK
-- constraint in place, so the table is rebuilt (SQLite's own procedure: migrate() runs
-- migrations with foreign keys off and checks them all before commit).
CREATE TABLE model_versions_new (
  version INTEGER PRIMARY KEY,
  parent INTEGER REFERENCES model_versions(version),
  -- candidate: trained, not yet judged. active: serving. retired: served before.
  -- rejected: failed the guard (reason says why). corrupt: its weight file failed
  -- verification (reason names the file and what was wrong)
  status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'retired', 'rejected', 'corrupt')),
  -- null for a rejected candidate whose weights were not kept
  weights_path TEXT,
  created_at INTEGER NOT NULL,
  activated_at INTEGER,
  stats TEXT,
  reason TEXT,
  -- hex sha256 of the weight file's bytes as written. Null for version 0 (the base model,
  -- identified by meta.base_model_sha256) and for rows written before this migration until
  -- their first load records it
  weights_sha256 TEXT
);
INSERT INTO model_versions_new (version, parent, status, weights_path, created_at, activated_at, stats, reason)
  SELECT version, parent, status, weights_path, created_at, activated_at, stats, reason FROM model_versions;
DROP TABLE model_versions;
ALTER TABLE model_versions_new RENAME TO model_versions;
CREATE UNIQUE INDEX model_versions_one_active ON model_versions(status) WHERE status = 'active';
