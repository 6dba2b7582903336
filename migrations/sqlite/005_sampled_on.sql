-- Upstream sampling: the server may draw a question's samples on OpenAI-compatible inference
-- servers (vLLM and the like) instead of in this process. Where they were drawn is kept with
-- the question, so an answer can be traced to the server and the model that produced it:
-- sampled_on is the upstream's base URL (several, comma-separated, when the votes went to more
-- than one), sampled_model the model or LoRA adapter name it was asked for (e.g. ttrl-v3).
-- Both null when the samples were drawn in this process, and for every row written before.
ALTER TABLE questions ADD COLUMN sampled_on TEXT;
ALTER TABLE questions ADD COLUMN sampled_model TEXT;
