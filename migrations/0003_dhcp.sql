-- DHCP leases, kept across restarts.
CREATE TABLE leases (
    ip TEXT PRIMARY KEY NOT NULL,
    mac TEXT NOT NULL,
    expires INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('offered', 'bound')),
    updated TEXT NOT NULL
);
CREATE INDEX leases_mac ON leases(mac);

-- Machines seen PXE-booting while MAC collection was on.
CREATE TABLE discovered (
    mac TEXT PRIMARY KEY NOT NULL,
    arch INTEGER,
    vendor_class TEXT NOT NULL DEFAULT '',
    interface TEXT NOT NULL DEFAULT '',
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1
);

-- Small server-wide settings (the MAC collection window, ...).
CREATE TABLE settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
