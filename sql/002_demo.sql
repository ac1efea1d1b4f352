-- A small demo schema: todo lists owned by users, optionally shared with a team.
CREATE TABLE IF NOT EXISTS todo_lists (
    id         bigserial PRIMARY KEY,
    owner_id   text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id    text,
    title      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS todos (
    id         bigserial PRIMARY KEY,
    list_id    bigint NOT NULL REFERENCES todo_lists (id) ON DELETE CASCADE,
    owner_id   text NOT NULL,
    title      text NOT NULL,
    done       boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Read rules compare owner/team columns on updates and deletes too, so the
-- old row must carry them.
ALTER TABLE todo_lists REPLICA IDENTITY FULL;
ALTER TABLE todos REPLICA IDENTITY FULL;

INSERT INTO users (id, name, team_id) VALUES
    ('alice', 'Alice', 'red'),
    ('bob', 'Bob', 'red'),
    ('carol', 'Carol', 'blue')
ON CONFLICT (id) DO NOTHING;

INSERT INTO todo_lists (owner_id, team_id, title)
SELECT * FROM (VALUES
    ('alice', NULL, 'Alice''s groceries'),
    ('alice', 'red', 'Red team launch'),
    ('carol', 'blue', 'Blue team retro')
) AS v(owner_id, team_id, title)
WHERE NOT EXISTS (SELECT 1 FROM todo_lists);

INSERT INTO todos (list_id, owner_id, title, done)
SELECT l.id, l.owner_id, t.title, t.done
FROM todo_lists l
JOIN (VALUES
    ('Alice''s groceries', 'Milk', false),
    ('Alice''s groceries', 'Bread', true),
    ('Red team launch', 'Write the announcement', false),
    ('Blue team retro', 'Collect feedback', false)
) AS t(list_title, title, done) ON t.list_title = l.title
WHERE NOT EXISTS (SELECT 1 FROM todos);
