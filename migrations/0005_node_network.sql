-- A node's network identity: its interfaces, and each interface's static addresses. An
-- address belongs to at most one node (the primary key says so); a node's deploy may be
-- forced past a network configuration the agent cannot fully rewrite.
CREATE TABLE node_interfaces (
    node TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    name TEXT,
    mac TEXT,
    gateway TEXT,
    dns TEXT NOT NULL DEFAULT '[]',
    role TEXT NOT NULL,
    PRIMARY KEY (node, position)
);

CREATE TABLE node_if_addrs (
    ip TEXT PRIMARY KEY NOT NULL,
    node TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    prefix INTEGER NOT NULL
);
CREATE INDEX node_if_addrs_node ON node_if_addrs(node);

ALTER TABLE nodes ADD COLUMN network_force INTEGER NOT NULL DEFAULT 0;
