-- The experience log on PostgreSQL, for several front-ends: the SQLite schema after its
-- migration 004 (one schema, two dialects), and what only a shared log needs: the front-ends
-- seen, and each question's transaction id, by which the leader reads the fleet's
-- experiences in commit order without missing one still being written (experiencesAfter).

CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);

CREATE TABLE model_versions (
  version INTEGER PRIMARY KEY,
  parent INTEGER REFERENCES model_versions(version),
  -- candidate: trained, not yet judged. active: serving. retired: served before.
  -- rejected: failed the guard, or interrupted (reason says why). corrupt: its weight file
  -- failed verification (reason names the file and what was wrong)
  status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'retired', 'rejected', 'corrupt')),
  -- null for a rejected candidate whose weights were not kept, or a pruned one
  weights_path TEXT,
  created_at BIGINT NOT NULL,
  activated_at BIGINT,
  stats JSONB,
  reason TEXT,
  weights_sha256 TEXT
);
CREATE UNIQUE INDEX model_versions_one_active ON model_versions(status) WHERE status = 'active';

CREATE TABLE questions (
  id BIGSERIAL PRIMARY KEY,
  -- the client's own id for the message, and the connection it came on
  client_id TEXT,
  connection TEXT,
  question TEXT NOT NULL,
  votes_requested INTEGER NOT NULL,
  received_at BIGINT NOT NULL,
  answered_at BIGINT,
  status TEXT NOT NULL CHECK (status IN ('answered', 'failed')),
  error TEXT,
  answer TEXT,
  majority_ratio DOUBLE PRECISION,
  votes JSONB,
  model_version INTEGER REFERENCES model_versions(version),
  latency_ms DOUBLE PRECISION,
  frontend TEXT,
  source TEXT,
  trainable BOOLEAN NOT NULL DEFAULT false,
  prompt_ids BYTEA,
  -- the writing transaction: rows are read back in (tx, id) order below the oldest
  -- transaction still open, so none is skipped while another front-end's commit is pending
  tx BIGINT NOT NULL DEFAULT txid_current()
);
CREATE INDEX questions_received ON questions(received_at);
CREATE INDEX questions_by_text ON questions(question);
CREATE INDEX questions_trainable ON questions(tx, id) WHERE trainable;

CREATE TABLE samples (
  question_id BIGINT NOT NULL REFERENCES questions(id),
  idx INTEGER NOT NULL,
  text TEXT NOT NULL,
  answer TEXT,
  tokens INTEGER NOT NULL,
  logprob_sum DOUBLE PRECISION NOT NULL,
  stopped BOOLEAN NOT NULL,
  token_ids BYTEA,
  logprobs BYTEA,
  PRIMARY KEY (question_id, idx)
);

-- Admin actions, guard decisions and other things an operator wants to read back.
CREATE TABLE events (
  id BIGSERIAL PRIMARY KEY,
  at BIGINT NOT NULL,
  kind TEXT NOT NULL,
  detail JSONB NOT NULL
);

-- Every front-end's heartbeat: what it serves and whether it leads.
CREATE TABLE frontends (
  id TEXT PRIMARY KEY,
  address TEXT NOT NULL,
  started_at BIGINT NOT NULL,
  last_seen BIGINT NOT NULL,
  serving_version INTEGER NOT NULL,
  leader BOOLEAN NOT NULL
);
