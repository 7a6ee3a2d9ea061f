-- What a node's boot environment found when it last booted: its disks and firmware, as
-- the agent reported them (JSON, the wire form), so a layout can be planned for it.
CREATE TABLE node_hardware (
    node TEXT PRIMARY KEY NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    reported TEXT NOT NULL,
    deployment INTEGER,
    report TEXT NOT NULL
);
