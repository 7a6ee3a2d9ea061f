-- Machines the server knows: the standby and compute nodes, with their MACs and IPs.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('standby', 'compute')),
    image TEXT,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);

CREATE TABLE node_macs (
    mac TEXT PRIMARY KEY NOT NULL,
    node TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE
);

CREATE TABLE node_ips (
    ip TEXT PRIMARY KEY NOT NULL,
    node TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE
);

-- One deploy of an image to a node, with its scoped token (stored as a BLAKE3 hash).
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    image TEXT NOT NULL,
    manifest_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    expires TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT '',
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    files_done INTEGER NOT NULL DEFAULT 0,
    files_total INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    error TEXT
);
CREATE INDEX deployments_node ON deployments(node);
CREATE INDEX events_node_kind ON events(node, kind);
