-- The image inventory: every captured version of every image.
CREATE TABLE image_names (
    name TEXT PRIMARY KEY NOT NULL,
    next_version INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL REFERENCES image_names(name),
    version INTEGER NOT NULL,
    manifest_id TEXT NOT NULL,
    created TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    entries INTEGER NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    added_bytes INTEGER NOT NULL,
    layout TEXT,
    UNIQUE (name, version)
);
CREATE INDEX images_manifest ON images(manifest_id);

-- Append-only log of what happened (captures, deletes, deploys, failovers).
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    node TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX events_ts ON events(ts);
