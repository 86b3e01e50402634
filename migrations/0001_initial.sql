-- Users, auth, conversations, messages, reports and API logs.

CREATE TABLE users (
    id              text PRIMARY KEY,
    email           text,
    leadership_type text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);

CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   uuid NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

CREATE TABLE reports (
    id               uuid PRIMARY KEY,
    user_id          text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    cache_key        text NOT NULL,
    leadership_type  text NOT NULL,
    leadership_code  text NOT NULL,
    scores           jsonb,
    confidence       double precision,
    all_scores       jsonb,
    report           jsonb NOT NULL,
    sources          jsonb NOT NULL DEFAULT '[]',
    provider         text NOT NULL,
    model            text,
    prompt_version   text NOT NULL,
    kb_version       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    CONSTRAINT reports_user_cache_key UNIQUE (user_id, cache_key)
);
CREATE INDEX reports_expires_idx ON reports (expires_at);

CREATE TABLE conversations (
    id               uuid PRIMARY KEY,
    user_id          text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    report_id        uuid REFERENCES reports (id) ON DELETE SET NULL,
    title            text,
    leadership_type  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_recent_idx ON conversations (user_id, updated_at DESC, id DESC);

CREATE TABLE messages (
    id                 uuid PRIMARY KEY,
    seq                bigint GENERATED ALWAYS AS IDENTITY,
    conversation_id    uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id            text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role               text NOT NULL CHECK (role IN ('user', 'assistant')),
    content            text NOT NULL DEFAULT '',
    status             text NOT NULL DEFAULT 'complete'
                       CHECK (status IN ('streaming', 'complete', 'interrupted', 'error')),
    reply_to           uuid REFERENCES messages (id) ON DELETE CASCADE,
    client_message_id  text,
    provider           text,
    model              text,
    prompt_tokens      integer,
    completion_tokens  integer,
    total_tokens       integer,
    ttft_ms            integer,
    latency_ms         integer,
    finish_reason      text,
    error_code         text,
    sources            jsonb NOT NULL DEFAULT '[]',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation_seq_idx ON messages (conversation_id, seq);
CREATE UNIQUE INDEX messages_client_id_uniq
    ON messages (conversation_id, client_message_id)
    WHERE role = 'user' AND client_message_id IS NOT NULL;
CREATE UNIQUE INDEX messages_reply_uniq ON messages (reply_to) WHERE reply_to IS NOT NULL;
CREATE INDEX messages_streaming_idx ON messages (status) WHERE status = 'streaming';

CREATE TABLE api_logs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts           timestamptz NOT NULL,
    request_id   text,
    user_id      text,
    method       text NOT NULL,
    endpoint     text NOT NULL,
    status       integer NOT NULL,
    duration_ms  double precision NOT NULL,
    client_ip    text,
    error        text
);
CREATE INDEX api_logs_ts_idx ON api_logs (ts);
CREATE INDEX api_logs_user_idx ON api_logs (user_id, ts) WHERE user_id IS NOT NULL;
