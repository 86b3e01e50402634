-- Why an answer was cancelled: a user's cancel on the instance running it (`user`), one
-- relayed from another instance (`remote`), a server shutdown past its grace period
-- (`shutdown`), or LLM_TOTAL_TIMEOUT (`timeout`, stored with status `error`). NULL for
-- answers that were not cancelled.

ALTER TABLE messages
    ADD COLUMN cancel_reason text
        CHECK (cancel_reason IN ('user', 'remote', 'shutdown', 'timeout'));
