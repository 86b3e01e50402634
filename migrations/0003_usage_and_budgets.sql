-- Usage that adds up: what each turn was billed, and per-user daily totals that the
-- usage endpoint reads and the daily token budget checks.

ALTER TABLE messages
    ADD COLUMN cached_tokens    integer,
    ADD COLUMN thought_tokens   integer,
    ADD COLUMN usage_estimated  boolean NOT NULL DEFAULT false;

CREATE TABLE usage_daily (
    user_id            text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day                date NOT NULL,
    turns              integer NOT NULL DEFAULT 0,
    estimated_turns    integer NOT NULL DEFAULT 0,
    reports            integer NOT NULL DEFAULT 0,
    prompt_tokens      bigint NOT NULL DEFAULT 0,
    completion_tokens  bigint NOT NULL DEFAULT 0,
    cached_tokens      bigint NOT NULL DEFAULT 0,
    thought_tokens     bigint NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, day)
);
