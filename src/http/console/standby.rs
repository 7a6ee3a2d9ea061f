//! The standby wizard page: `understudy standby add` in the browser. One page shows the six
//! steps with their state, derived from the inventory by [`crate::wizard::steps`] (the
//! functions the command uses), so the page resumes wherever the command or an earlier
//! visit stopped. Each action is a form with the session's CSRF token; the page refreshes
//! itself from the event stream (nodes, DHCP, deployments) and polls while a deploy or a
//! capture runs, and is whole without its script.
//!
//! The only thing the inventory does not hold is the image picked before the node exists
//! (the command keeps it in memory too): it travels in the page's address (`?image=`).

use super::pages::{self, Ctx, Page, button_form, csrf_field, image_select, state_badge};
use super::rate::Rate;
use super::{Admin, Console, Posted, St, failure, html, said, some};
use crate::capture::CaptureOptions;
use crate::failover::Status;
use crate::http::error::ApiError;
use crate::inventory::{Inventory, InventoryError};
use crate::wire::{Deployment, Discovered, Image, Node, NodeCreate, NodeNetwork, NodePatch, Role};
use crate::wizard::{self, DeployView, Mark, Observed, StepView};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// How long the wizard opens MAC collection for (as the command does).
const COLLECT_MINUTES: i64 = 60;

/// The wizard's capture of this host's root.
#[derive(Debug, Clone)]
pub struct CaptureRun {
    /// The image name it captures into.
    pub name: String,
    /// When it started (RFC 3339).
    pub started: String,
    /// `NAME@N` captured, or why not; `None` while it runs.
    pub result: Option<Result<String, String>>,
}

/// Capture `root` as image `name` in the background (the command captures `/` in its own
/// process; the server does it here, so the page can be left and come back). One at a time.
pub fn spawn_capture(console: &Arc<Console>, inv: Inventory, name: String, root: PathBuf) -> Result<(), String> {
    {
        let mut slot = console.capture.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref().filter(|c| c.result.is_none()) {
            return Err(format!("a capture as {} is running already (since {})", c.name, c.started));
        }
        *slot = Some(CaptureRun { name: name.clone(), started: crate::db::now(), result: None });
    }
    let console = console.clone();
    tokio::spawn(async move {
        let opts = CaptureOptions::this_root(true);
        let r =
            inv.capture(&name, &root, opts).await.map(|(row, _)| row.label()).map_err(|e| ApiError::from(e).message);
        if let Err(e) = &r {
            tracing::warn!("console: capture of {} as {name} failed: {e}", root.display());
        }
        if let Some(c) = console.capture.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            c.result = Some(r);
        }
    });
    Ok(())
}

/// The page's address for standby `name` with the picked `image` and collection start.
pub fn path(name: &str, image: Option<&str>, since: Option<&str>) -> String {
    let mut q: Vec<(&str, &str)> = vec![("name", name)];
    if let Some(i) = image.filter(|i| !i.is_empty()) {
        q.push(("image", i));
    }
    if let Some(s) = since.filter(|s| !s.is_empty()) {
        q.push(("since", s));
    }
    format!("{}?{}", Page::Standby.path(), serde_urlencoded::to_string(q).unwrap_or_default())
}

/// What the page shows for one standby.
pub struct Wizard {
    /// The standby's name.
    pub name: String,
    /// The image picked before the node exists.
    pub chosen_image: Option<String>,
    /// When the wizard opened MAC collection (RFC 3339), for [`wizard::new_mac`].
    pub since: String,
    /// The steps.
    pub steps: Vec<StepView>,
    /// Image versions to pick from, newest first.
    pub images: Vec<String>,
    /// The machine that network-booted since, if any.
    pub candidate: Option<Discovered>,
    /// Machines seen that no node owns.
    pub unowned: Vec<Discovered>,
    /// The identity proposed for the node, or why there is none (network step only).
    pub proposal: Option<Result<NodeNetwork, String>>,
    /// The node.
    pub node: Option<Node>,
    /// Its newest deployment.
    pub newest: Option<Deployment>,
    /// That deployment's rate.
    pub rate: Option<Rate>,
    /// The wizard's capture.
    pub capture: Option<CaptureRun>,
    /// The primary's failover status.
    pub failover: Option<Status>,
    /// The name this host captures as.
    pub host: String,
}

/// Without a name: the standbys to resume and a name to start with.
pub struct Start {
    /// Standby-role nodes, to resume.
    pub standbys: Vec<Node>,
    /// A name refused, with why.
    pub refused: Option<String>,
}

/// The page's query: the standby, the image picked, when collection opened.
#[derive(Deserialize, Default)]
pub(crate) struct PageQuery {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    since: String,
}

fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

async fn load(st: &crate::http::AppState, console: &Console, q: &PageQuery) -> Result<Wizard, InventoryError> {
    let name = q.name.trim().to_string();
    let node = match st.inv.node(&name).await {
        Ok(n) => Some(n),
        Err(InventoryError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let mut images: Vec<Image> = st.inv.images_page(1000, 0).await?.items;
    images.sort_by(|a, b| b.created.cmp(&a.created).then(b.version.cmp(&a.version)));
    let capture = console.capture.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // A capture the wizard finished is the image, as a `--no-capture` run takes the newest.
    let chosen_image = some(&q.image).or_else(|| capture.as_ref().and_then(|c| c.result.clone()?.ok()));
    let collecting = st.inv.collecting(time::OffsetDateTime::now_utc().unix_timestamp()).await?;
    let seen = st.inv.discovered().await?;
    let candidate = wizard::new_mac(&seen, &q.since).cloned();
    let unowned: Vec<Discovered> = seen.into_iter().filter(|d| d.assigned_to.is_none()).collect();
    let network = match &node {
        Some(_) => Some(st.inv.network(&name).await?),
        None => None,
    };
    let deps = match &node {
        Some(_) => st.inv.deployments(Some(&name), 100, 0).await?.items,
        None => vec![],
    };
    let newest = wizard::newest(&deps).cloned();
    let rate = newest.as_ref().and_then(|d| console.rates(std::slice::from_ref(d)).remove(&d.id));
    let failover = st.failover.as_ref().map(|h| h.status());
    let capturing = capture.as_ref().filter(|c| c.result.is_none()).map(|c| c.name.clone());
    let obs = Observed {
        name: &name,
        node: node.as_ref(),
        chosen_image: chosen_image.as_deref(),
        capturing: capturing.as_deref(),
        collecting,
        candidate: candidate.as_ref(),
        network: network.as_ref(),
        newest: newest.as_ref(),
        failover: failover.as_ref(),
    };
    let steps = wizard::steps(&obs);
    // The proposal is worked out only when it is the step to confirm (it reads the
    // primary's interfaces); the LAN is probed when the admin sets it, not on every refresh.
    let proposal = if steps.iter().any(|s| s.step == "network" && s.mark == Mark::Action) {
        Some(st.inv.propose_network(&name, false).await.map_err(|e| ApiError::from(e).message))
    } else {
        None
    };
    Ok(Wizard {
        name,
        chosen_image,
        since: q.since.clone(),
        steps,
        images: images.iter().map(Image::label).collect(),
        candidate,
        unowned,
        proposal,
        node,
        newest,
        rate,
        capture,
        failover,
        host: hostname(),
    })
}

/// `GET /console/standby`: the wizard for `?name=`, or the start form.
pub(crate) async fn page(State(st): St, admin: Admin, Query(q): Query<PageQuery>) -> Response {
    let name = q.name.trim();
    if name.is_empty() || crate::inventory::names::check_node_name(name).is_err() {
        let refused = (!name.is_empty()).then(|| {
            format!("{name:?} is not a node name: letters, digits, '.', '_' and '-', starting with a letter or digit")
        });
        return match st.inv.nodes(1000, 0).await {
            Ok(p) => {
                let standbys = p.items.into_iter().filter(|n| n.role == Role::Standby).collect();
                html(StatusCode::OK, start(&admin.ctx(), &Start { standbys, refused }))
            }
            Err(e) => failure(e),
        };
    }
    match load(&st, &admin.console, &q).await {
        Ok(w) => html(StatusCode::OK, wizard_page(&admin.ctx(), &w)),
        Err(e) => failure(e),
    }
}

// ---------------------------------------------------------------- actions

/// The fields every wizard form posts (each action reads the ones it needs).
#[derive(Deserialize)]
pub(crate) struct StepForm {
    name: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    capture_name: String,
}

impl StepForm {
    fn back(&self) -> String {
        path(self.name.trim(), some(&self.image).as_deref(), some(&self.since).as_deref())
    }
}

/// Pick the image: kept on the node when it exists, else carried in the page's address.
pub(crate) async fn image(State(st): St, Posted(admin, f): Posted<StepForm>) -> Response {
    let name = f.name.trim();
    let Some(img) = some(&f.image) else {
        return admin.done_at(&f.back(), Err("Pick an image first.".into()));
    };
    let r = match st.inv.resolve(&img).await {
        Err(e) => said::<()>(Err(e), |_| String::new()),
        Ok(row) => match st.inv.node(name).await {
            Ok(_) => {
                let patch = NodePatch { image: Some(img.clone()), ..NodePatch::default() };
                said(st.inv.update_node(name, patch).await, |n| {
                    format!("Node {} now deploys {}.", n.name, n.image.unwrap_or_default())
                })
            }
            Err(InventoryError::NotFound(_)) => Ok(format!("Image {} picked for {name}.", row.label())),
            Err(e) => said::<()>(Err(e), |_| String::new()),
        },
    };
    admin.done_at(&path(name, Some(&img), some(&f.since).as_deref()), r)
}

/// Capture this host's `/` (as the command does without `--image`).
pub(crate) async fn capture(State(st): St, Posted(admin, f): Posted<StepForm>) -> Response {
    let cname = some(&f.capture_name).unwrap_or_else(hostname);
    let r = match crate::inventory::names::check_name(&cname) {
        Err(e) => Err(e.to_string()),
        Ok(()) => spawn_capture(&admin.console, st.inv.clone(), cname.clone(), PathBuf::from("/"))
            .map(|()| format!("Capturing / as {cname}: the page shows when it is done.")),
    };
    admin.done_at(&f.back(), r)
}

/// Open MAC collection; the page then waits for the standby's PXE request.
pub(crate) async fn collect(State(st): St, Posted(admin, f): Posted<StepForm>) -> Response {
    let since = crate::db::now();
    let r = said(st.inv.collect(COLLECT_MINUTES).await, |c| {
        format!("MAC collection open until {}: network-boot {} now.", c.until, f.name.trim())
    });
    admin.done_at(&path(f.name.trim(), some(&f.image).as_deref(), Some(&since)), r)
}

/// Register the standby with its image and MAC (or give an existing node the MAC), and
/// close MAC collection, as the command does once the MAC is known.
pub(crate) async fn node(State(st): St, Posted(admin, f): Posted<StepForm>) -> Response {
    let name = f.name.trim().to_string();
    let mac = f.mac.trim().to_string();
    if mac.is_empty() {
        return admin.done_at(&f.back(), Err("Give the standby's MAC address.".into()));
    }
    let r = match st.inv.node(&name).await {
        Ok(n) => {
            let patch = NodePatch {
                macs: Some(vec![mac.clone()]),
                image: if n.image.is_none() { some(&f.image) } else { None },
                ..NodePatch::default()
            };
            said(st.inv.update_node(&name, patch).await, |n| format!("Node {} has MAC {}.", n.name, n.macs.join(",")))
        }
        Err(InventoryError::NotFound(_)) => {
            let b = NodeCreate {
                name: name.clone(),
                role: Some("standby".into()),
                image: some(&f.image),
                macs: vec![mac.clone()],
                ips: vec![],
            };
            said(st.inv.create_node(b).await, |n| format!("Node {} registered ({}, {}).", n.name, n.role, n.state))
        }
        Err(e) => said::<()>(Err(e), |_| String::new()),
    };
    if r.is_ok()
        && let Err(e) = st.inv.collect(0).await
    {
        tracing::warn!("console: could not close MAC collection: {e}");
    }
    admin.done_at(&path(&name, None, None), r)
}

/// Set the network identity the page showed, checked again (the LAN probed) as it is set.
pub(crate) async fn network(State(st): St, Posted(admin, f): Posted<StepForm>) -> Response {
    let name = f.name.trim();
    let r = match serde_json::from_str::<NodeNetwork>(&f.identity) {
        Err(e) => Err(format!("The identity in the form is malformed: {e}")),
        Ok(net) => {
            said(st.inv.set_network(name, net, true).await, |n| format!("{name} gets {}.", wizard::network_line(&n)))
        }
    };
    admin.done_at(&path(name, None, None), r)
}

/// Deploy a failed standby again (the command does it on its own when it resumes).
pub(crate) async fn redeploy(State(st): St, Posted(admin, f): Posted<StepForm>) -> Response {
    let name = f.name.trim();
    let r = said(st.inv.redeploy(name).await, |n| {
        format!("{} is {}: its next network boot installs its image again.", n.name, n.state)
    });
    admin.done_at(&path(name, None, None), r)
}

// ---------------------------------------------------------------- the page

/// The start: a name, or a standby to resume.
pub fn start(ctx: &Ctx, s: &Start) -> Markup {
    pages::layout(
        ctx,
        Page::Standby,
        html! {
            p { "The same steps as " code { "understudy standby add NAME" } ": image, MAC, node, network identity, deploy, join. Each step's state comes from the inventory, so the wizard resumes where it (or the command) stopped." }
            @if let Some(why) = &s.refused { p.flash.error role="alert" { (why) } }
            form.stack method="get" action=(Page::Standby.path()) {
                label for="standby-name" { "Standby name" }
                input #standby-name type="text" name="name" value="standby" required pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,63}";
                button type="submit" { "Start" }
            }
            @if !s.standbys.is_empty() {
                h2 { "Resume" }
                ul {
                    @for n in &s.standbys {
                        li { a href=(path(&n.name, None, None)) { (n.name) } " " (state_badge(n.state)) }
                    }
                }
            }
        },
    )
}

fn mark_badge(m: Mark) -> Markup {
    let class = match m {
        Mark::Done | Mark::Skipped => "badge up",
        Mark::Failed => "badge down",
        Mark::Running | Mark::Action => "badge s-deploying",
        Mark::Later => "badge",
    };
    html! { span class=(class) { (m.as_str()) } }
}

/// The wizard for one standby.
pub fn wizard_page(ctx: &Ctx, w: &Wizard) -> Markup {
    let running = w.steps.iter().any(|s| s.mark == Mark::Running && (s.step == "deploy" || s.step == "image"));
    pages::layout(
        ctx,
        Page::Standby,
        html! {
            p { "Standby " strong { (w.name) } ": the steps of " code { "understudy standby add " (w.name) } ", resumed from what the inventory holds." }
            div #wizard data-live data-poll=(if running { "2" } else { "" }) {
                ol.steps {
                    @for (i, s) in w.steps.iter().enumerate() {
                        li.step id=(format!("step-{}", s.step)) data-mark=(s.mark.as_str()) aria-current=[(matches!(s.mark, Mark::Action | Mark::Running | Mark::Failed)).then_some("step")] {
                            h2 { (i + 1) ". " (step_title(s.step)) " " (mark_badge(s.mark)) }
                            p.detail { (s.detail) }
                            @if s.mark != Mark::Later { (step_body(ctx, w, s)) }
                        }
                    }
                }
            }
        },
    )
}

fn step_title(step: &str) -> &'static str {
    match step {
        "image" => "Image",
        "mac" => "MAC address",
        "node" => "Node",
        "network" => "Network identity",
        "deploy" => "Deploy",
        "join" => "Join failover",
        _ => "Step",
    }
}

fn hidden(w: &Wizard) -> Markup {
    html! {
        input type="hidden" name="name" value=(w.name);
        @if let Some(i) = &w.chosen_image { input type="hidden" name="image" value=(i); }
        @if !w.since.is_empty() { input type="hidden" name="since" value=(w.since); }
    }
}

fn step_body(ctx: &Ctx, w: &Wizard, s: &StepView) -> Markup {
    match (s.step, s.mark) {
        ("image", Mark::Action) => html! {
            @if let Some(CaptureRun { result: Some(Err(why)), name, .. }) = &w.capture {
                p.error role="alert" { "The capture as " (name) " failed: " (why) }
            }
            form.stack method="post" action="/console/standby/image" {
                (csrf_field(&ctx.csrf))
                (hidden(w))
                label for="wizard-image" { "Image version" }
                (image_select("wizard-image", &w.images))
                button type="submit" { "Use this image" }
            }
            form.stack method="post" action="/console/standby/capture" {
                (csrf_field(&ctx.csrf))
                (hidden(w))
                label for="wizard-capture" { "Or capture this host's / as" }
                input #wizard-capture type="text" name="capture_name" value=(w.host) pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,63}";
                button type="submit" { "Capture /" }
            }
        },
        ("image", Mark::Running) => html! {
            @if let Some(c) = &w.capture { p.hint { "Started " time datetime=(c.started) { (c.started) } "; the page moves on when it is done." } }
        },
        ("mac", Mark::Action) => html! {
            @if let Some(d) = &w.candidate {
                p { code.mac { (d.mac) } " on " (d.interface) " (" (d.vendor_class) ", arch " (d.arch.map(|a| a.to_string()).unwrap_or_else(|| "-".into())) ")" }
                form.inline method="post" action="/console/standby/node" {
                    (csrf_field(&ctx.csrf))
                    (hidden(w))
                    input type="hidden" name="mac" value=(d.mac);
                    button type="submit" { "Use " (d.mac) " for " (w.name) }
                }
            } @else {
                (button_form_fields(ctx, w, "/console/standby/collect", "Open MAC collection"))
            }
            (mac_by_hand(ctx, w))
        },
        ("mac", Mark::Running) => html! {
            p.hint { "Waiting for " (w.name) "'s PXE request; machines already seen that no node owns:" }
            @if w.unowned.is_empty() { p { "none yet." } } @else {
                ul { @for d in &w.unowned { li { code { (d.mac) } " on " (d.interface) ", last seen " (d.last_seen) } } }
            }
            (mac_by_hand(ctx, w))
        },
        ("network", Mark::Action) => match &w.proposal {
            Some(Ok(net)) => html! {
                p { "Proposed from the primary's networks (checked again, the LAN probed, when you set it):" }
                (identity_table(net))
                form.inline method="post" action="/console/standby/network" {
                    (csrf_field(&ctx.csrf))
                    (hidden(w))
                    input type="hidden" name="identity" value=(serde_json::to_string(net).unwrap_or_default());
                    button type="submit" { "Give " (w.name) " this identity" }
                }
                " " a href=(format!("/console/nodes/edit?{}", serde_urlencoded::to_string([("name", &w.name)]).unwrap_or_default())) { "Set it by hand" }
            },
            Some(Err(why)) => html! {
                p.error role="alert" { "No proposal: " (why) }
                a href=(format!("/console/nodes/edit?{}", serde_urlencoded::to_string([("name", &w.name)]).unwrap_or_default())) { "Set it by hand" }
            },
            None => html! {},
        },
        ("network", Mark::Done) => html! {
            @if let Some(n) = &w.node { a href=(format!("/console/nodes/edit?{}", serde_urlencoded::to_string([("name", &n.name)]).unwrap_or_default())) { "Change it" } }
        },
        ("deploy", Mark::Running) => html! {
            @if let Some(DeployView::Running { .. }) = &s.deploy {
                @if let Some(d) = &w.newest { (pages::progress_cell(d, w.rate.as_ref())) }
            } @else {
                p.hint { "Set the standby to boot from the network (PXE) and power it on; the server answers its request with the installer." }
            }
        },
        ("deploy", Mark::Failed) => html! {
            @if let Some(d) = &w.newest { (pages::progress_cell(d, None)) }
            (button_form_fields(ctx, w, "/console/standby/redeploy", "Deploy again"))
        },
        ("join", Mark::Running | Mark::Done) => html! {
            @if let Some(f) = &w.failover {
                ul.channels { @for c in &f.channels { li class=(if c.up { "up" } else { "down" }) { (c.name) ": " (if c.up { "up" } else { "down" }) } } }
                p { "VIP holder: " strong { (f.holder.as_deref().unwrap_or("nobody (or unknown)")) } ". " a href=(Page::Failover.path()) { "Failover details" } }
            }
        },
        _ => html! {},
    }
}

fn button_form_fields(ctx: &Ctx, w: &Wizard, action: &str, label: &str) -> Markup {
    let mut fields: Vec<(&str, &str)> = vec![("name", &w.name)];
    if let Some(i) = &w.chosen_image {
        fields.push(("image", i));
    }
    if !w.since.is_empty() {
        fields.push(("since", &w.since));
    }
    button_form(&ctx.csrf, action, &fields, label, "")
}

fn mac_by_hand(ctx: &Ctx, w: &Wizard) -> Markup {
    html! {
        form.inline method="post" action="/console/standby/node" {
            (csrf_field(&ctx.csrf))
            (hidden(w))
            label for="wizard-mac" { "Or its MAC by hand" }
            input #wizard-mac type="text" name="mac" placeholder="52:54:00:12:34:56" required;
            button type="submit" { "Use this MAC" }
        }
    }
}

/// A network identity as a table.
pub fn identity_table(net: &NodeNetwork) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th scope="col" { "Network" } th scope="col" { "Interface" } th scope="col" { "MAC" } th scope="col" { "Addresses" } th scope="col" { "Gateway" } th scope="col" { "DNS" } } }
            tbody { @for i in &net.interfaces { tr {
                th scope="row" { (i.role) }
                td { (i.name.as_deref().unwrap_or("-")) }
                td { code { (i.mac.as_deref().unwrap_or("-")) } }
                td { (if i.addresses.is_empty() { "-".to_string() } else { i.addresses.join(", ") }) }
                td { (i.gateway.as_deref().unwrap_or("-")) }
                td { (if i.dns.is_empty() { "-".to_string() } else { i.dns.join(", ") }) }
            } } }
        } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wizard_at(mark_of: &[(&str, Mark)]) -> Wizard {
        let steps = wizard::STEPS
            .iter()
            .map(|s| StepView {
                step: s,
                mark: mark_of.iter().find(|(k, _)| k == s).map(|(_, m)| *m).unwrap_or(Mark::Done),
                detail: format!("<i>{s}</i>"),
                deploy: None,
            })
            .collect();
        Wizard {
            name: "sb<1>".into(),
            chosen_image: Some("base@1".into()),
            since: "2026-12-01T00:00:00.000Z".into(),
            steps,
            images: vec!["base@1".into()],
            candidate: Some(Discovered {
                mac: "52:54:00:00:00:05".into(),
                arch: Some(7),
                vendor_class: "PXEClient".into(),
                interface: "eth0".into(),
                first_seen: String::new(),
                last_seen: String::new(),
                count: 1,
                assigned_to: None,
            }),
            unowned: vec![],
            proposal: Some(Ok(NodeNetwork {
                interfaces: vec![crate::wire::NetInterface::parse_spec("role=private,address=10.0.0.9/24").unwrap()],
                force: false,
            })),
            node: None,
            newest: None,
            rate: None,
            capture: None,
            failover: None,
            host: "head-a".into(),
        }
    }

    #[test]
    fn every_action_is_a_csrf_form_with_labels_and_text_is_escaped() {
        let ctx = Ctx { csrf: "c5rf".into(), flash: None };
        for marks in [
            vec![("image", Mark::Action)],
            vec![("mac", Mark::Action)],
            vec![("network", Mark::Action)],
            vec![("deploy", Mark::Failed)],
        ] {
            let h = wizard_page(&ctx, &wizard_at(&marks)).into_string();
            let posts = h.matches(r#"method="post""#).count();
            assert!(posts >= 2, "{h}");
            assert_eq!(h.matches(r#"name="csrf" value="c5rf""#).count(), posts, "{marks:?}: {h}");
            assert!(h.contains("sb&lt;1&gt;") && !h.contains("sb<1>"), "{h}");
            assert!(h.contains("&lt;i&gt;image&lt;/i&gt;"), "{h}");
            // Every visible input has its label.
            for id in ["wizard-image", "wizard-capture", "wizard-mac"] {
                if h.contains(&format!(r#"id="{id}""#)) {
                    assert!(h.contains(&format!(r#"<label for="{id}">"#)), "{id}: {h}");
                }
            }
        }
        let h = wizard_page(&ctx, &wizard_at(&[("network", Mark::Action)])).into_string();
        assert!(h.contains("10.0.0.9/24") && h.contains(r#"name="identity""#), "{h}");
        let h = wizard_page(&ctx, &wizard_at(&[("mac", Mark::Action)])).into_string();
        assert!(h.contains("Use 52:54:00:00:00:05 for sb&lt;1&gt;"), "{h}");
        let h = wizard_page(&ctx, &wizard_at(&[("deploy", Mark::Running)])).into_string();
        assert!(h.contains(r#"data-poll="2""#), "a running deploy is polled: {h}");
    }

    #[test]
    fn the_page_address_carries_the_picked_image_and_the_collection_start() {
        assert_eq!(path("sb1", None, None), "/console/standby?name=sb1");
        assert_eq!(
            path("sb1", Some("base@2"), Some("2026-12-01T00:00:00.000Z")),
            "/console/standby?name=sb1&image=base%402&since=2026-12-01T00%3A00%3A00.000Z"
        );
        let s = Start { standbys: vec![], refused: Some("<b>".into()) };
        let h = start(&Ctx { csrf: "x".into(), flash: None }, &s).into_string();
        assert!(h.contains("&lt;b&gt;") && h.contains(r#"<label for="standby-name">"#), "{h}");
    }
}
