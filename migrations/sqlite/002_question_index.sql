-- Sampling seeds are keyed by (server seed, question, how often it was asked before): the
-- count is an indexed lookup per question.
CREATE INDEX questions_by_text ON questions(question);
