-- Feedback on answers, and regenerated answers kept as versions of one reply.

-- One rating per user per answer; a second one replaces it.
CREATE TABLE message_feedback (
    message_id  uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    rating      text NOT NULL CHECK (rating IN ('up', 'down')),
    comment     text CHECK (char_length(comment) <= 1000),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id)
);

-- A user message may now have several replies: version 1 is the first answer, each
-- regeneration adds the next one and marks the one before `superseded`. Exactly one
-- reply per user message is current; history and the conversation read only that one.
-- `anchor_seq` keeps a regenerated answer where its first version stood, since `seq`
-- (an identity) numbers it after everything said since.
ALTER TABLE messages
    ADD COLUMN version     integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    ADD COLUMN superseded  boolean NOT NULL DEFAULT false,
    ADD COLUMN anchor_seq  bigint;

DROP INDEX messages_reply_uniq;
CREATE UNIQUE INDEX messages_reply_version_uniq ON messages (reply_to, version)
    WHERE reply_to IS NOT NULL;
CREATE UNIQUE INDEX messages_reply_current_uniq ON messages (reply_to)
    WHERE reply_to IS NOT NULL AND NOT superseded;
-- A regeneration is idempotent by its own client_message_id, like a question.
CREATE UNIQUE INDEX messages_regen_client_id_uniq
    ON messages (conversation_id, client_message_id)
    WHERE role = 'assistant' AND client_message_id IS NOT NULL;
CREATE INDEX messages_conversation_position_idx
    ON messages (conversation_id, (COALESCE(anchor_seq, seq)))
    WHERE NOT superseded;
