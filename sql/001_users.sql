-- The users table pgsat checks every token's user_id against
-- (AUTH_USERS_TABLE = users, AUTH_USERS_ID_COLUMN = id).
CREATE TABLE IF NOT EXISTS users (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    team_id    text,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The demo's read rules filter this table: with FULL, a row moving into a
-- user's view by UPDATE always carries every column.
ALTER TABLE users REPLICA IDENTITY FULL;
