//! The console's pages as maud templates over plain data: every value goes through maud's
//! escaping (a node name or event text with HTML in it shows as text). Regions marked
//! `data-live` are what the page script swaps in place when the event stream says
//! something changed; without the script the pages are complete as they are.

use super::session::Flash;
use crate::failover::Status;
use crate::wire::{Deployment, DeploymentStatus, Discovered, Event, Image, Job, JobState, Node, NodeState};
use maud::{DOCTYPE, Markup, html};

/// Where each page is, for the navigation and redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/`.
    Overview,
    /// `/console/images`.
    Images,
    /// `/console/nodes`.
    Nodes,
    /// `/console/standby`: the standby wizard.
    Standby,
    /// `/console/deployments`.
    Deployments,
    /// `/console/failover`.
    Failover,
}

impl Page {
    /// Every page, in navigation order.
    pub const ALL: [Page; 6] =
        [Page::Overview, Page::Images, Page::Nodes, Page::Standby, Page::Deployments, Page::Failover];

    /// The page's path.
    pub fn path(self) -> &'static str {
        match self {
            Page::Overview => "/",
            Page::Images => "/console/images",
            Page::Nodes => "/console/nodes",
            Page::Standby => "/console/standby",
            Page::Deployments => "/console/deployments",
            Page::Failover => "/console/failover",
        }
    }

    /// The page's title.
    pub fn title(self) -> &'static str {
        match self {
            Page::Overview => "Overview",
            Page::Images => "Images",
            Page::Nodes => "Nodes",
            Page::Standby => "Add a standby",
            Page::Deployments => "Deployments",
            Page::Failover => "Failover",
        }
    }
}

/// What every page of a session needs.
pub struct Ctx {
    /// The session's CSRF token (a hidden field in every form).
    pub csrf: String,
    /// A message from the last action.
    pub flash: Option<Flash>,
}

/// Bytes for people.
pub(super) fn bytes(n: i64) -> String {
    crate::layout::doc::human(n.max(0) as u64)
}

/// Percent done, when the total is known.
pub fn percent(done: i64, total: i64) -> Option<u8> {
    (total > 0).then(|| ((done.clamp(0, total) as f64 / total as f64) * 100.0).floor() as u8)
}

/// The hidden CSRF field.
pub(super) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A form of one button posting to `action` (with `fields` as hidden inputs).
pub(super) fn button_form(csrf: &str, action: &str, fields: &[(&str, &str)], label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(csrf))
            @for (k, v) in fields { input type="hidden" name=(k) value=(v); }
            button.(class) type="submit" { (label) }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · understudy" }
            link rel="stylesheet" href="/console/assets/console.css";
        }
    }
}

/// The frame of every page of a session: navigation, the flash, the content, the script.
pub fn layout(ctx: &Ctx, page: Page, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(page.title()))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "understudy" }
                    nav aria-label="Console" {
                        ul {
                            @for p in Page::ALL {
                                li {
                                    @if p == page {
                                        a href=(p.path()) aria-current="page" { (p.title()) }
                                    } @else {
                                        a href=(p.path()) { (p.title()) }
                                    }
                                }
                            }
                        }
                    }
                    (button_form(&ctx.csrf, "/console/logout", &[], "Log out", "quiet"))
                }
                main #main {
                    h1 { (page.title()) }
                    @if let Some(f) = &ctx.flash {
                        @if f.error {
                            p.flash.error role="alert" { (f.text) }
                        } @else {
                            p.flash.ok role="status" { (f.text) }
                        }
                    }
                    (content)
                    p.live-state #live-state aria-live="polite" { "Live updates: off (reload to refresh)" }
                }
                script src="/console/assets/console.js" defer {}
            }
        }
    }
}

/// The login page; `error` says why the last attempt failed.
pub fn login(login_csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body.login {
                main #main {
                    h1 { "understudy console" }
                    @if let Some(e) = error { p.flash.error role="alert" { (e) } }
                    form method="post" action="/console/login" {
                        input type="hidden" name="csrf" value=(login_csrf);
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        p.hint { "The admin token is in the server's data dir (" code { "admin.token" } ")." }
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// A small page saying a request was refused (CSRF, no such thing).
pub fn refused(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.login {
                main #main {
                    h1 { (title) }
                    p { (text) }
                    p { a href="/" { "Back to the console" } }
                }
            }
        }
    }
}

pub(super) fn state_badge(s: NodeState) -> Markup {
    html! { span class={ "badge s-" (s.as_str()) } { (s.as_str()) } }
}

fn events_table(events: &[Event]) -> Markup {
    html! {
        @if events.is_empty() {
            p { "No events yet." }
        } @else {
            div.scroll {
                table {
                    caption.visually-hidden { "Events, newest first" }
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Kind" } th scope="col" { "Node" } th scope="col" { "What happened" } } }
                    tbody {
                        @for e in events {
                            tr data-event-id=(e.id) {
                                td { time datetime=(e.ts) { (e.ts) } }
                                td { code { (e.kind) } }
                                td { (e.node.as_deref().unwrap_or("-")) }
                                td.msg { (e.message) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Data of the overview.
pub struct Overview {
    /// The failover status, when this server runs failover.
    pub failover: Option<Status>,
    /// Nodes per state (states with none left out).
    pub node_states: Vec<(NodeState, usize)>,
    /// All nodes counted.
    pub nodes_total: i64,
    /// MAC collection is on.
    pub collecting: bool,
    /// Deployments running.
    pub running: i64,
    /// The last events, newest first.
    pub events: Vec<Event>,
    /// Standby nodes with the deployment they run (their newest finished one), if any.
    pub standbys: Vec<(Node, Option<Deployment>)>,
    /// Standby freshness on this server: its `[sync]` follower and `[capture]` schedule.
    pub sync: crate::sync::SyncReport,
}

/// Freshness: on a standby, the version it runs against the primary's newest, the lag and
/// the alarm; on a primary, the same as each standby last reported, and its scheduled
/// captures.
fn freshness(r: &crate::sync::SyncReport) -> Markup {
    html! {
        @if let Some(f) = &r.follow {
            h3 { "Freshness (this standby)" }
            dl.facts data-freshness=(f.state) {
                (follower_facts(f, "Primary's newest", " (served from here after a takeover)"))
            }
        }
        @for b in &r.standbys {
            h3 { "Freshness of standby " (b.node) }
            dl.facts data-standby-freshness=(b.node) {
                (follower_facts(&b.status, "Newest here", ""))
                dt { "Reported" } dd {
                    (format!("{:.0} s ago", b.age_seconds))
                    @if b.stale { " " span.badge.down { "overdue: the standby may be down" } }
                }
            }
        }
        @if let Some(c) = &r.capture {
            h3 { "Scheduled capture" }
            dl.facts {
                dt { "Image" } dd { (c.last_version.clone().unwrap_or_else(|| c.image.clone())) }
                dt { "Every" } dd { (format!("{:.0} s", c.interval_seconds)) " of " code { (c.source) } }
                dt { "Runs" } dd { (c.runs) @if c.failures > 0 { ", " span.badge.down { (c.failures) " failed" } } }
                @if c.running { dt { "Now" } dd { "capturing" } }
                @if let Some(e) = &c.last_error { dt { "Last error" } dd { (e) } }
            }
        }
    }
}

/// A follower's status as facts: what it runs, the newest version (`newest` names it),
/// state, lag and alarm, bytes to write, the last error and its store replica.
fn follower_facts(f: &crate::sync::SyncStatus, newest: &str, replica_note: &str) -> Markup {
    let label = |v: &Option<crate::sync::decide::Version>| v.as_ref().map(|v| v.label.clone()).unwrap_or("-".into());
    html! {
        dt { "Runs" } dd { strong { (label(&f.applied)) } }
        dt { (newest) } dd { (label(&f.newest)) }
        dt { "State" } dd { (f.state) @if f.partial.is_some() { " (partial: " (label(&f.partial)) ")" } }
        dt { "Lag" } dd {
            (format!("{:.0} s", f.lag_seconds))
            @if f.alarm { " " span.badge.down { "behind more than " (format!("{:.0} s", f.max_lag_seconds)) } }
        }
        @if f.pending_bytes > 0 { dt { "Still to write" } dd { (bytes(f.pending_bytes as i64)) } }
        @if let Some(e) = &f.last_error { dt { "Last error" } dd { (e) } }
        dt { "Store replica" } dd data-replica=(label(&f.replica)) {
            @match (&f.replica, &f.replica_error) {
                (_, Some(e)) => { span.badge.down { "failing" } " " (e) },
                (Some(r), None) => { (r.label) (replica_note) },
                (None, None) => "none yet",
            }
        }
    }
}

/// What each standby runs: the image version its last finished deployment installed.
fn standby_images(standbys: &[(Node, Option<Deployment>)], peer: Option<&str>) -> Markup {
    html! {
        @if !standbys.is_empty() {
            h3 { "Standbys" }
            ul.standbys {
                @for (n, d) in standbys {
                    li data-standby=(n.name) {
                        strong { (n.name) } " " (state_badge(n.state))
                        @if peer == Some(n.name.as_str()) { " (the failover peer)" }
                        ": "
                        @match d {
                            Some(d) => { "runs " strong.applied { (d.image) } " (deployment " (d.id) ", " time datetime=(d.finished.as_deref().unwrap_or("")) { (d.finished.as_deref().unwrap_or("")) } ")" },
                            None => "no image deployed yet",
                        }
                    }
                }
            }
        }
    }
}

fn failover_summary(s: &Status) -> Markup {
    html! {
        dl.facts {
            dt { "VIP holder" } dd { strong { (s.holder.as_deref().unwrap_or("nobody (or unknown)")) } }
            dt { "This node" } dd { (s.node) " (" (s.role) "), " (s.state) ", term " (s.term) }
            dt { "Peer" } dd { (s.peer.as_deref().unwrap_or("not heard yet")) }
        }
        @if !s.channels.is_empty() {
            ul.channels {
                @for c in &s.channels {
                    li class=(if c.up { "up" } else { "down" }) {
                        (c.name) ": " (if c.up { "up" } else { "down" })
                        ", loss " (format!("{:.0}%", c.loss * 100.0))
                        @if let Some(r) = c.rtt_ms { ", RTT " (format!("{r:.1} ms")) }
                    }
                }
            }
        }
        @if !s.alarms.is_empty() {
            ul.alarms role="alert" { @for a in &s.alarms { li { (a) } } }
        }
    }
}

/// The overview: the pair at a glance, nodes by state, the last events.
pub fn overview(ctx: &Ctx, o: &Overview) -> Markup {
    layout(
        ctx,
        Page::Overview,
        html! {
            div.grid #overview data-live {
                section.card aria-labelledby="h-failover" {
                    h2 #h-failover { "Failover" }
                    @match &o.failover {
                        Some(s) => (failover_summary(s)),
                        None => p { "Failover is not running on this server (no " code { "[failover]" } " section)." },
                    }
                    (standby_images(&o.standbys, o.failover.as_ref().and_then(|s| s.peer.as_deref())))
                    (freshness(&o.sync))
                    p { a href=(Page::Failover.path()) { "Failover details" } }
                }
                section.card aria-labelledby="h-nodes" {
                    h2 #h-nodes { "Nodes" }
                    p.big { (o.nodes_total) " node" @if o.nodes_total != 1 { "s" } }
                    @if !o.node_states.is_empty() {
                        ul.states { @for (s, n) in &o.node_states { li { (state_badge(*s)) " " (n) } } }
                    }
                    p { "Deployments running: " (o.running) }
                    p { "MAC collection: " strong { (if o.collecting { "on" } else { "off" }) } }
                    p { a href=(Page::Nodes.path()) { "Nodes" } }
                }
            }
            section aria-labelledby="h-events" {
                h2 #h-events { "Last events" }
                div #events data-live { (events_table(&o.events)) }
            }
        },
    )
}

/// Data of the images page.
pub struct Images {
    /// Every version, newest first.
    pub images: Vec<Image>,
    /// This server's recent jobs, newest first.
    pub jobs: Vec<Job>,
    /// The newest verify job of each version (by `NAME@N`) since the server started.
    pub verifies: std::collections::HashMap<String, Job>,
    /// Now, in Unix seconds (for the ages).
    pub now: i64,
    /// The layout shown, or why it cannot be.
    pub layout: Option<Result<crate::wire::ImageLayout, String>>,
}

/// A version's size over the bytes it added to the store: how much a re-capture saved.
pub fn dedup_ratio(i: &Image) -> String {
    if i.bytes <= 0 {
        "-".into()
    } else if i.added_bytes <= 0 {
        "all shared".into()
    } else {
        format!("{:.1}\u{d7}", i.bytes as f64 / i.added_bytes as f64)
    }
}

fn verify_cell(j: Option<&Job>) -> Markup {
    html! {
        @match j {
            None => span.hint { "not since the server started" },
            Some(j) if j.state == JobState::Running => span { "verifying\u{2026}" },
            Some(j) if j.state == JobState::Failed => span.error { "could not verify: " (j.error.as_deref().unwrap_or("")) },
            Some(j) => {
                @let faults: Vec<String> = j.result.as_ref().and_then(|r| r.get("faults")).and_then(|f| f.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default();
                @let when = j.finished.as_deref().unwrap_or("");
                @if faults.is_empty() {
                    span.badge.up { "ok" } " " time.hint datetime=(when) { (when) }
                } @else {
                    span.badge.down { (faults.len()) " fault(s)" } " " span.error { (faults[0]) }
                }
            }
        }
    }
}

/// Images: versions with sizes, dedup, verify status and age; verify and gc as jobs; the
/// recorded disk layout of one version as a table.
pub fn images(ctx: &Ctx, d: &Images) -> Markup {
    layout(
        ctx,
        Page::Images,
        html! {
            section aria-labelledby="h-versions" {
                h2 #h-versions { "Versions" }
                p.hint { "Dedup: the version's size over the bytes it added to the store (compressed chunks no earlier version had); a re-capture that changed little shows a large ratio." }
                div #images data-live {
                    @if d.images.is_empty() {
                        p { "No images yet: capture one with " code { "understudy capture NAME /" } "." }
                    } @else {
                        div.scroll {
                            table {
                                thead { tr {
                                    th scope="col" { "Image" } th scope="col" { "Age" } th scope="col" { "Files" }
                                    th scope="col" { "Size" } th scope="col" { "Stored" } th scope="col" { "Added" }
                                    th scope="col" { "Dedup" } th scope="col" { "Verified" }
                                    th scope="col" { "Source" } th scope="col" { span.visually-hidden { "Actions" } }
                                } }
                                tbody {
                                    @for i in &d.images {
                                        @let label = format!("{}@{}", i.name, i.version);
                                        tr data-image=(label) {
                                            th scope="row" { (label) }
                                            td { time datetime=(i.created) title=(i.created) { (super::rate::age(&i.created, d.now).unwrap_or_else(|| i.created.clone())) } }
                                            td.num { (i.files) }
                                            td.num { (bytes(i.bytes)) }
                                            td.num { (bytes(i.stored_bytes)) }
                                            td.num { (bytes(i.added_bytes)) }
                                            td.num.dedup { (dedup_ratio(i)) }
                                            td.verify { (verify_cell(d.verifies.get(&label))) }
                                            td { (i.source) }
                                            td {
                                                (button_form(&ctx.csrf, "/console/images/verify", &[("image", &label)], &format!("Verify {label}"), ""))
                                                " " a href=(format!("/console/images?layout={label}#h-layout")) { "Layout of " (label) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !d.images.is_empty() {
                section aria-labelledby="h-layout" {
                    h2 #h-layout { "Disk layout" }
                    form.inline method="get" action="/console/images" {
                        label for="layout-pick" { "Version" }
                        select #layout-pick name="layout" {
                            @for i in &d.images {
                                @let label = i.label();
                                @let picked = matches!(&d.layout, Some(Ok(l)) if l.image == label);
                                option value=(label) selected[picked] { (label) }
                            }
                        }
                        button type="submit" { "Show layout" }
                    }
                    div #layout {
                        @match &d.layout {
                            Some(Ok(l)) => (super::layout_view::table(&l.image, l.recorded, &l.layout)),
                            Some(Err(why)) => p.flash.error role="alert" { (why) },
                            None => {},
                        }
                    }
                }
            }
            section aria-labelledby="h-jobs" {
                h2 #h-jobs { "Jobs" }
                p { "Garbage collection frees the chunks no image reaches any more." }
                (button_form(&ctx.csrf, "/console/gc", &[], "Start garbage collection", ""))
                div #jobs data-live data-poll=(if d.jobs.iter().any(|j| j.state == JobState::Running) { "2" } else { "" }) {
                    @if d.jobs.is_empty() {
                        p { "No jobs since the server started." }
                    } @else {
                        div.scroll {
                            table {
                                thead { tr { th scope="col" { "Job" } th scope="col" { "Kind" } th scope="col" { "State" } th scope="col" { "Started" } th scope="col" { "Result" } } }
                                tbody {
                                    @for j in &d.jobs {
                                        tr {
                                            td { (j.id) }
                                            td { (format!("{:?}", j.kind).to_lowercase()) }
                                            td { (format!("{:?}", j.state).to_lowercase()) }
                                            td { time datetime=(j.started) { (j.started) } }
                                            td.msg {
                                                @if let Some(e) = &j.error { span.error { (e) } }
                                                @else if let Some(r) = &j.result { code { (r.to_string()) } }
                                                @else { "…" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Data of the nodes page.
pub struct Nodes {
    /// Every node by name.
    pub nodes: Vec<Node>,
    /// MAC collection is on.
    pub collecting: bool,
    /// Machines seen while collecting.
    pub discovered: Vec<Discovered>,
    /// Image names to pick from (newest version by name).
    pub image_names: Vec<String>,
    /// Each node's addresses: its reserved IPs, then its network identity's (by node name).
    pub addresses: std::collections::HashMap<String, Vec<String>>,
}

pub(super) fn image_select(id: &str, names: &[String]) -> Markup {
    html! {
        select id=(id) name="image" {
            option value="" { "(none yet)" }
            @for n in names { option value=(n) { (n) } }
        }
    }
}

/// Nodes: the table, add, redeploy; discovered machines with collection and assign.
pub fn nodes(ctx: &Ctx, d: &Nodes) -> Markup {
    layout(
        ctx,
        Page::Nodes,
        html! {
            section aria-labelledby="h-table" {
                h2 #h-table { "All nodes" }
                div #nodes data-live {
                    @if d.nodes.is_empty() {
                        p { "No nodes yet." }
                    } @else {
                        div.scroll {
                            table {
                                thead { tr {
                                    th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "State" }
                                    th scope="col" { "MACs" } th scope="col" { "Addresses" } th scope="col" { "Image" }
                                    th scope="col" { "Updated" } th scope="col" { span.visually-hidden { "Actions" } }
                                } }
                                tbody {
                                    @for n in &d.nodes {
                                        tr {
                                            th scope="row" { (n.name) }
                                            td { (n.role.as_str()) }
                                            td { (state_badge(n.state)) }
                                            td { @for m in &n.macs { code { (m) } " " } }
                                            td { @for ip in d.addresses.get(&n.name).unwrap_or(&n.ips) { (ip) " " } }
                                            td { (n.image.as_deref().unwrap_or("-")) }
                                            td { time datetime=(n.updated) { (n.updated) } }
                                            td {
                                                a href=(format!("/console/nodes/edit?{}", serde_urlencoded::to_string([("name", &n.name)]).unwrap_or_default())) { "Edit " (n.name) }
                                                " "
                                                @if n.image.is_some() {
                                                    (button_form(&ctx.csrf, "/console/nodes/redeploy", &[("name", &n.name)], &format!("Redeploy {}", n.name), ""))
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="h-discovered" {
                h2 #h-discovered { "Discovered machines" }
                div #collect data-live {
                    @if d.collecting {
                        p { "MAC collection is " strong { "on" } ": machines that network-boot appear below as they ask for an address." }
                        (button_form(&ctx.csrf, "/console/collect", &[("minutes", "0")], "Stop collection", ""))
                    } @else {
                        p { "MAC collection is " strong { "off" } "." }
                        form.inline method="post" action="/console/collect" {
                            (csrf_field(&ctx.csrf))
                            label for="minutes" { "Collect for (minutes)" }
                            input #minutes type="number" name="minutes" value="30" min="1" max="10080" required;
                            button type="submit" { "Start collection" }
                        }
                    }
                }
                div #discovered data-live {
                    @if d.discovered.is_empty() {
                        p { "No machines seen yet." }
                    } @else {
                        ul.cards {
                            @for (k, m) in d.discovered.iter().enumerate() {
                                li.card data-mac=(m.mac) {
                                    p { code.mac { (m.mac) } " on " (m.interface) }
                                    p.hint {
                                        "arch " (m.arch.map(|a| a.to_string()).unwrap_or_else(|| "-".into()))
                                        ", " (m.vendor_class) ", seen " (m.count) "× (last " (m.last_seen) ")"
                                    }
                                    @if let Some(owner) = &m.assigned_to {
                                        p { "Assigned to node " strong { (owner) } "." }
                                    } @else {
                                        form method="post" action="/console/discovered/assign" {
                                            (csrf_field(&ctx.csrf))
                                            input type="hidden" name="mac" value=(m.mac);
                                            label for=(format!("assign-name-{k}")) { "Node name" }
                                            input id=(format!("assign-name-{k}")) type="text" name="name" required pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,63}";
                                            label for=(format!("assign-role-{k}")) { "Role" }
                                            select id=(format!("assign-role-{k}")) name="role" {
                                                option value="standby" { "standby" }
                                                option value="compute" { "compute" }
                                            }
                                            label for=(format!("assign-image-{k}")) { "Image" }
                                            (image_select(&format!("assign-image-{k}"), &d.image_names))
                                            p.hint { "The node gets the network identity proposed from the primary's: the next free address on each of its networks, checked against everything that holds one." }
                                            button type="submit" { "Assign " (m.mac) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="h-add" {
                h2 #h-add { "Add a node" }
                form.stack method="post" action="/console/nodes/add" {
                    (csrf_field(&ctx.csrf))
                    label for="add-name" { "Name" }
                    input #add-name type="text" name="name" required pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,63}";
                    label for="add-mac" { "MAC address" }
                    input #add-mac type="text" name="mac" placeholder="52:54:00:12:34:56";
                    label for="add-ip" { "IP address (optional)" }
                    input #add-ip type="text" name="ip";
                    label for="add-role" { "Role" }
                    select #add-role name="role" { option value="standby" { "standby" } option value="compute" { "compute" } }
                    label for="add-image" { "Image" }
                    (image_select("add-image", &d.image_names))
                    button type="submit" { "Add node" }
                }
            }
        },
    )
}

/// Lines of a failed deployment's error shown (its end: where the agent stopped).
pub const ERROR_TAIL_LINES: usize = 20;
/// Characters of that tail at most.
pub const ERROR_TAIL_CHARS: usize = 2000;

/// The end of an agent's error: its last [`ERROR_TAIL_LINES`] lines, at most
/// [`ERROR_TAIL_CHARS`] characters; true when something before it was left out.
pub fn error_tail(e: &str) -> (String, bool) {
    let lines: Vec<&str> = e.trim_end().lines().collect();
    let from = lines.len().saturating_sub(ERROR_TAIL_LINES);
    let mut tail = lines[from..].join("\n");
    let mut cut = from > 0;
    let n = tail.chars().count();
    if n > ERROR_TAIL_CHARS {
        tail = tail.chars().skip(n - ERROR_TAIL_CHARS).collect();
        cut = true;
    }
    (tail, cut)
}

/// Rate and time left of a running deployment, in words.
pub fn rate_words(r: &super::rate::Rate) -> (String, String) {
    let speed = format!("{}/s", bytes(r.bytes_per_sec as i64));
    let basis = match r.basis {
        super::rate::Basis::Window(s) => format!("over the last {}", super::rate::duration_words(s)),
        super::rate::Basis::SinceStart => "average since the start".to_string(),
    };
    let eta = r.eta_secs.map(super::rate::duration_words).unwrap_or_else(|| "unknown (no progress)".into());
    (format!("{speed} ({basis})"), eta)
}

/// One deployment's progress cell: bar, bytes, rate and time left, the error tail.
pub fn progress_cell(d: &Deployment, rate: Option<&super::rate::Rate>) -> Markup {
    html! {
        @let pct = percent(d.bytes_done, d.bytes_total);
        @if let Some(p) = pct {
            progress max="100" value=(p) aria-label=(format!("deployment {} progress", d.id)) { (p) "%" }
            " " (p) "% "
        }
        span.hint { (bytes(d.bytes_done)) " of " (bytes(d.bytes_total)) }
        @if let Some(r) = rate {
            @let (speed, eta) = rate_words(r);
            br;
            span.rate { "Rate " (speed) } ", " span.eta { "time left " (eta) }
        }
        @if d.status == DeploymentStatus::Failed {
            @if let Some(e) = &d.error {
                @let (tail, cut) = error_tail(e);
                @if cut { p.hint { "The end of the agent's error (the full text is in the API's deployment record):" } }
                pre.error { (tail) }
            }
        }
    }
}

/// Deployments: progress with rate and time left, and the error of a failed one.
pub fn deployments(
    ctx: &Ctx,
    deps: &[Deployment],
    rates: &std::collections::HashMap<i64, super::rate::Rate>,
) -> Markup {
    layout(
        ctx,
        Page::Deployments,
        html! {
            p.hint { "Rate: bytes written over the last 30 s of the agent's progress reports as this console sampled them (every 2 s while a page shows them), or the average since the agent started; time left: the bytes still to write at that rate." }
            // Progress reports are not events: while one runs, the script polls the table.
            div #deployments data-live data-poll=(if deps.iter().any(|d| d.status == DeploymentStatus::Running) { "2" } else { "" }) {
                @if deps.is_empty() {
                    p { "No deployments yet." }
                } @else {
                    div.scroll {
                        table {
                            thead { tr {
                                th scope="col" { "#" } th scope="col" { "Node" } th scope="col" { "Image" }
                                th scope="col" { "Status" } th scope="col" { "Phase" } th scope="col" { "Progress" }
                                th scope="col" { "Created" } th scope="col" { "Finished" }
                            } }
                            tbody {
                                @for d in deps {
                                    tr data-deployment=(d.id) {
                                        td { (d.id) }
                                        th scope="row" { (d.node) }
                                        td { (d.image) }
                                        td { span class={ "badge d-" (d.status.as_str()) } { (d.status.as_str()) } }
                                        td { (if d.phase.is_empty() { "-" } else { &d.phase }) }
                                        td { (progress_cell(d, rates.get(&d.id))) }
                                        td { time datetime=(d.created) { (d.created) } }
                                        td { (d.finished.as_deref().unwrap_or("-")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What a planned switchover does, in words, for the confirmation page.
pub fn switchover_words(action: &str) -> Option<(&'static str, &'static str)> {
    match action {
        "takeover" => Some((
            "Take over the VIP",
            "This node asks its peer to hand the VIP over. If the peer agrees, it drops the VIP and this node \
             raises it (with gratuitous ARP); clients of the VIP then reach this node. If the peer is silent on \
             every channel, this node takes the VIP at once (fencing still applies).",
        )),
        "release" => Some((
            "Release the VIP",
            "This node hands the VIP to its peer, only if the peer is ready (heard both ways, healthy). The \
             VIP leaves this node and the peer raises it; clients of the VIP then reach the peer. If the peer \
             is not ready, the request is refused and the event log says why.",
        )),
        _ => None,
    }
}

/// Failover: role, state, holder, term, channels, monitors, switchover buttons.
pub fn failover(ctx: &Ctx, s: Option<&Status>) -> Markup {
    layout(
        ctx,
        Page::Failover,
        html! {
            @match s {
                None => p { "Failover is not running on this server (no " code { "[failover]" } " section in its config)." },
                Some(s) => {
                    div #failover data-live {
                        dl.facts {
                            dt { "Node" } dd { (s.node) }
                            dt { "Role" } dd { (s.role) }
                            dt { "State" } dd { strong { (s.state) } }
                            dt { "VIP holder" } dd { strong { (s.holder.as_deref().unwrap_or("nobody (or unknown)")) } }
                            dt { "Term" } dd { (s.term) }
                            dt { "Peer" } dd {
                                (s.peer.as_deref().unwrap_or("not heard yet"))
                                @if let Some(ms) = s.peer_last_heard_ms { " (heard " (ms) " ms ago)" }
                            }
                            dt { "Updated" } dd { (s.updated) }
                        }
                        @if !s.alarms.is_empty() {
                            h2 { "Alarms" }
                            ul.alarms role="alert" { @for a in &s.alarms { li { (a) } } }
                        }
                        h2 { "Channels" }
                        @if s.channels.is_empty() { p { "No channels." } } @else {
                            div.scroll { table {
                                thead { tr { th scope="col" { "Channel" } th scope="col" { "Up" } th scope="col" { "Loss" } th scope="col" { "RTT" } th scope="col" { "Last heard" } th scope="col" { "Send failures" } } }
                                tbody { @for c in &s.channels { tr {
                                    th scope="row" { (c.name) }
                                    td { span class=(if c.up { "badge up" } else { "badge down" }) { (if c.up { "up" } else { "down" }) } }
                                    td.num { (format!("{:.1}%", c.loss * 100.0)) }
                                    td.num { (c.rtt_ms.map(|r| format!("{r:.1} ms")).unwrap_or_else(|| "-".into())) }
                                    td.num { (c.last_heard_ms.map(|m| format!("{m} ms ago")).unwrap_or_else(|| "never".into())) }
                                    td.num { (c.send_failures) }
                                } } }
                            } }
                        }
                        h2 { "Monitors" }
                        @if s.monitors.is_empty() { p { "No monitors." } } @else {
                            div.scroll { table {
                                thead { tr { th scope="col" { "Monitor" } th scope="col" { "Health" } th scope="col" { "Restarts" } th scope="col" { "Checks" } th scope="col" { "Failures" } } }
                                tbody { @for m in &s.monitors { tr {
                                    th scope="row" { (m.name) }
                                    td { (m.health) @if m.escalated { " (escalated)" } }
                                    td.num { (m.restarts) } td.num { (m.checks) } td.num { (m.failures) }
                                } } }
                            } }
                        }
                        @if !s.events.is_empty() {
                            h2 { "Recent failover events" }
                            ul.log { @for e in s.events.iter().rev() { li { time datetime=(e.ts) { (e.ts) } " " code { (e.kind) } " " (e.message) } } }
                        }
                    }
                    section aria-labelledby="h-switch" {
                        h2 #h-switch { "Planned switchover" }
                        p { "Each button first shows what will happen and asks you to confirm." }
                        a.button href="/console/failover/confirm?action=takeover" { "Take over the VIP…" }
                        " "
                        a.button href="/console/failover/confirm?action=release" { "Release the VIP…" }
                    }
                }
            }
        },
    )
}

/// The confirmation of a planned switchover.
pub fn confirm_switchover(ctx: &Ctx, action: &str, s: &Status) -> Markup {
    let (title, what) = switchover_words(action).unwrap_or(("", ""));
    layout(
        ctx,
        Page::Failover,
        html! {
            section.confirm aria-labelledby="h-confirm" {
                h2 #h-confirm { (title) "?" }
                p { "Now: " strong { (s.holder.as_deref().unwrap_or("nobody (or unknown)")) } " holds the VIP; this node is " (s.node) " (" (s.state) ", term " (s.term) ")." }
                p { (what) }
                form.inline method="post" action=(format!("/console/failover/{action}")) {
                    (csrf_field(&ctx.csrf))
                    button.danger type="submit" { "Yes, " (title.to_lowercase()) }
                }
                " "
                a.button.quiet href=(Page::Failover.path()) { "Cancel" }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx { csrf: "c5rf".into(), flash: Some(Flash { error: true, text: "<b>bad</b>".into() }) }
    }

    #[test]
    fn text_with_html_is_escaped() {
        let ev = Event {
            id: 1,
            ts: "2026-12-01T00:00:00Z".into(),
            node: Some("<i>n</i>".into()),
            kind: "node.create".into(),
            message: "<script>alert(1)</script>".into(),
        };
        let o = Overview {
            failover: None,
            node_states: vec![],
            nodes_total: 0,
            collecting: false,
            running: 0,
            events: vec![ev],
            standbys: vec![],
            sync: Default::default(),
        };
        let html = overview(&ctx(), &o).into_string();
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;i&gt;n&lt;/i&gt;") && html.contains("&lt;b&gt;bad&lt;/b&gt;"));
    }

    #[test]
    fn every_form_carries_the_csrf_token() {
        let d = Nodes {
            nodes: vec![],
            collecting: true,
            discovered: vec![Discovered {
                mac: "52:54:00:00:00:01".into(),
                arch: Some(7),
                vendor_class: "PXEClient".into(),
                interface: "eth0".into(),
                first_seen: String::new(),
                last_seen: String::new(),
                count: 1,
                assigned_to: None,
            }],
            image_names: vec!["base".into()],
            addresses: Default::default(),
        };
        let html = nodes(&ctx(), &d).into_string();
        let forms = html.matches("<form").count();
        assert!(forms >= 4, "{html}");
        assert_eq!(html.matches(r#"name="csrf" value="c5rf""#).count(), forms, "{html}");
    }

    #[test]
    fn percent_is_bounded_and_needs_a_total() {
        assert_eq!(percent(0, 0), None);
        assert_eq!(percent(50, 200), Some(25));
        assert_eq!(percent(300, 200), Some(100));
        assert_eq!(percent(-1, 200), Some(0));
        assert!(switchover_words("takeover").is_some() && switchover_words("x").is_none());
    }

    #[test]
    fn the_error_tail_keeps_the_end_and_dedup_is_size_over_added() {
        assert_eq!(error_tail("disk too small\n"), ("disk too small".to_string(), false));
        let long: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let (tail, cut) = error_tail(&long);
        assert!(cut && tail.starts_with("line 11\n") && tail.ends_with("line 30"), "{tail}");
        let (tail, cut) = error_tail(&"x".repeat(5000));
        assert!(cut && tail.len() == ERROR_TAIL_CHARS);
        let img = |bytes, added| Image {
            name: "a".into(),
            version: 2,
            id: String::new(),
            created: String::new(),
            source: String::new(),
            entries: 1,
            files: 1,
            bytes,
            stored_bytes: bytes,
            added_bytes: added,
        };
        assert_eq!(dedup_ratio(&img(1000, 40)), "25.0\u{d7}");
        assert_eq!(dedup_ratio(&img(1000, 0)), "all shared");
        assert_eq!(dedup_ratio(&img(0, 0)), "-");
    }
}
