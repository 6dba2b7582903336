-- The experience log: every question, every sample, every vote, and the model versions
-- that produced them.

CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);

CREATE TABLE model_versions (
  version INTEGER PRIMARY KEY,
  parent INTEGER REFERENCES model_versions(version),
  -- candidate: trained, not yet judged; active: serving; retired: served before;
  -- rejected: failed the guard (reason says why)
  status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'retired', 'rejected')),
  -- null for a rejected candidate whose weights were not kept
  weights_path TEXT,
  created_at INTEGER NOT NULL,
  activated_at INTEGER,
  stats TEXT,
  reason TEXT
);
CREATE UNIQUE INDEX model_versions_one_active ON model_versions(status) WHERE status = 'active';

CREATE TABLE questions (
  id INTEGER PRIMARY KEY,
  -- the client's own id for the message, and the connection it came on
  client_id TEXT,
  connection TEXT,
  question TEXT NOT NULL,
  votes_requested INTEGER NOT NULL,
  received_at INTEGER NOT NULL,
  answered_at INTEGER,
  status TEXT NOT NULL CHECK (status IN ('answered', 'failed')),
  error TEXT,
  answer TEXT,
  majority_ratio REAL,
  votes TEXT,
  model_version INTEGER REFERENCES model_versions(version),
  latency_ms REAL
);
CREATE INDEX questions_received ON questions(received_at);

CREATE TABLE samples (
  question_id INTEGER NOT NULL REFERENCES questions(id),
  idx INTEGER NOT NULL,
  text TEXT NOT NULL,
  answer TEXT,
  tokens INTEGER NOT NULL,
  logprob_sum REAL NOT NULL,
  stopped INTEGER NOT NULL,
  PRIMARY KEY (question_id, idx)
) WITHOUT ROWID;

-- Admin actions, guard decisions and other things an operator wants to read back.
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  kind TEXT NOT NULL,
  detail TEXT NOT NULL
);
