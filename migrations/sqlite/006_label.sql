-- Labels: a client that knows a question's answer (an operator replaying a labelled stream)
-- may send it with the question, so that the server can measure how well its confidence
-- predicts correctness (the dashboard's calibration). The label is kept with the question
-- as the client sent it, so that a labelled stream's log can be scored again later, and a
-- replay of this log sends it again. For measurement only: nothing trains on it. Null for
-- questions asked without one, and for every row written before.
ALTER TABLE questions ADD COLUMN label TEXT;
