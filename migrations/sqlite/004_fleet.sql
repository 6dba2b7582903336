-- Several front-ends on one log (PostgreSQL keeps the same columns): which front-end answered
-- a question, who asked it (the update share counts by it), whether it was sampled as the
-- server samples (an update may train on it), and, where another process must train on it,
-- the exact token ids and log-probs drawn (little-endian int32 and float32). A single SQLite
-- process trains from memory and leaves the last three null.
ALTER TABLE questions ADD COLUMN frontend TEXT;
ALTER TABLE questions ADD COLUMN source TEXT;
ALTER TABLE questions ADD COLUMN trainable INTEGER NOT NULL DEFAULT 0;
ALTER TABLE questions ADD COLUMN prompt_ids BLOB;
ALTER TABLE samples ADD COLUMN token_ids BLOB;
ALTER TABLE samples ADD COLUMN logprobs BLOB;
