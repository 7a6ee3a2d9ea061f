//! A node's edit form: role, image, MACs, and its network identity interface by interface,
//! saved through the inventory's node and network identity functions (the API's). A refused
//! identity shows the form again, as typed, with the inventory's reason; "propose" sets the
//! identity proposed from the primary's networks, probed on the LAN.

use super::pages::{self, Ctx, Page, csrf_field};
use super::{Admin, Posted, St, failure, html, said};
use crate::http::error::ApiError;
use crate::wire::{NetInterface, Node, NodeNetwork, NodePatch};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

/// Interface rows the form offers beyond the node's own (for adding one).
const SPARE_ROWS: usize = 1;
/// Interface rows read from a posted form at most.
const ROWS_MAX: usize = 64;

/// The form's values: from the inventory, or as the admin posted them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeForm {
    /// The node (not editable here: the name is its identity everywhere).
    pub name: String,
    /// `standby` or `compute`.
    pub role: String,
    /// Image reference, empty for none.
    pub image: String,
    /// MACs, comma-separated.
    pub macs: String,
    /// The interfaces.
    pub interfaces: Vec<NetInterface>,
    /// Deploy even where the network configuration cannot be rewritten.
    pub force: bool,
}

impl NodeForm {
    /// The form of a node as the inventory holds it.
    pub fn of(n: &Node, net: &NodeNetwork) -> NodeForm {
        NodeForm {
            name: n.name.clone(),
            role: n.role.as_str().to_string(),
            image: n.image.clone().unwrap_or_default(),
            macs: n.macs.join(", "),
            interfaces: net.interfaces.clone(),
            force: net.force,
        }
    }

    /// Read a posted form (`if-K-FIELD` for the interface rows; empty rows are dropped).
    pub fn parse(pairs: &[(String, String)]) -> NodeForm {
        let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.trim().to_string()).unwrap_or_default();
        let list = |v: String| -> Vec<String> {
            v.split([',', ' ', '\n']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
        };
        let mut interfaces = Vec::new();
        for k in 0..ROWS_MAX {
            let f = |field: &str| get(&format!("if-{k}-{field}"));
            if !pairs.iter().any(|(x, _)| x.starts_with(&format!("if-{k}-"))) {
                continue;
            }
            let i = NetInterface {
                role: f("role"),
                name: Some(f("name")).filter(|s| !s.is_empty()),
                mac: Some(f("mac")).filter(|s| !s.is_empty()),
                addresses: list(f("addresses")),
                gateway: Some(f("gateway")).filter(|s| !s.is_empty()),
                dns: list(f("dns")),
            };
            let blank = i.name.is_none() && i.mac.is_none() && i.addresses.is_empty() && i.gateway.is_none();
            if !blank {
                interfaces.push(i);
            }
        }
        NodeForm {
            name: get("name"),
            role: get("role"),
            image: get("image"),
            macs: get("macs"),
            interfaces,
            force: pairs.iter().any(|(k, v)| k == "force" && v == "on"),
        }
    }

    /// The MACs as a list.
    pub fn mac_list(&self) -> Vec<String> {
        self.macs.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }
}

/// What changed on the node itself (`None`: nothing).
pub fn patch(cur: &Node, f: &NodeForm) -> Option<NodePatch> {
    let mut p = NodePatch::default();
    let mut any = false;
    if f.role != cur.role.as_str() {
        p.role = Some(f.role.clone());
        any = true;
    }
    // The same image again is no change (it would not move the node, but says nothing).
    if f.image != cur.image.clone().unwrap_or_default() {
        p.image = Some(f.image.clone());
        any = true;
    }
    if f.mac_list() != cur.macs {
        p.macs = Some(f.mac_list());
        any = true;
    }
    any.then_some(p)
}

/// `?name=` of the edit page.
#[derive(Deserialize)]
pub(crate) struct NameQuery {
    #[serde(default)]
    name: String,
}

fn edit_path(name: &str) -> String {
    format!("/console/nodes/edit?{}", serde_urlencoded::to_string([("name", name)]).unwrap_or_default())
}

async fn image_names(st: &crate::http::AppState) -> Vec<String> {
    let mut v: Vec<String> = match st.inv.images_page(1000, 0).await {
        Ok(p) => p.items.into_iter().flat_map(|i| [i.name.clone(), i.label()]).collect(),
        Err(_) => vec![],
    };
    v.sort();
    v.dedup();
    v
}

/// `GET /console/nodes/edit?name=`.
pub(crate) async fn page(State(st): St, admin: Admin, Query(q): Query<NameQuery>) -> Response {
    let load = async {
        let n = st.inv.node(&q.name).await?;
        let net = st.inv.network(&q.name).await?;
        Ok::<_, crate::inventory::InventoryError>(NodeForm::of(&n, &net))
    };
    match load.await {
        Ok(f) => html(StatusCode::OK, edit(&admin.ctx(), &f, &image_names(&st).await, None)),
        Err(e) => failure(e),
    }
}

/// `POST /console/nodes/edit`: the node's fields, then its network identity when it changed.
pub(crate) async fn save(State(st): St, Posted(admin, pairs): Posted<Vec<(String, String)>>) -> Response {
    let f = NodeForm::parse(&pairs);
    let cur = match st.inv.node(&f.name).await {
        Ok(n) => n,
        Err(e) => return failure(e),
    };
    let mut saved = Vec::new();
    if let Some(p) = patch(&cur, &f) {
        match st.inv.update_node(&f.name, p).await {
            Ok(_) => saved.push("role, image and MACs"),
            Err(e) => {
                let why = ApiError::from(e);
                let m = format!("Nothing saved: {}", why.message);
                return html(why.status, edit(&admin.ctx(), &f, &image_names(&st).await, Some(&m)));
            }
        }
    }
    let net = NodeNetwork { interfaces: f.interfaces.clone(), force: f.force };
    let changed = match st.inv.network(&f.name).await {
        Ok(cur) => cur != net,
        Err(e) => return failure(e),
    };
    if changed {
        // Checked like the API's PUT: as data, against the primary, other nodes and leases,
        // and what answers on the LAN.
        if let Err(e) = st.inv.set_network(&f.name, net, true).await {
            let why = ApiError::from(e);
            let kept = if saved.is_empty() { String::new() } else { format!(" (its {} were saved)", saved.join(", ")) };
            let m = format!("The network identity was refused{kept}: {}", why.message);
            return html(why.status, edit(&admin.ctx(), &f, &image_names(&st).await, Some(&m)));
        }
        saved.push("network identity");
    }
    let r = if saved.is_empty() {
        Ok(format!("Nothing changed on {}.", f.name))
    } else {
        Ok(format!("Node {} saved: {}.", f.name, saved.join(" and ")))
    };
    admin.done_at(&edit_path(&f.name), r)
}

/// The propose form: the node.
#[derive(Deserialize)]
pub(crate) struct ProposeForm {
    name: String,
}

/// `POST /console/nodes/propose`: set the identity proposed from the primary's networks.
pub(crate) async fn propose(State(st): St, Posted(admin, f): Posted<ProposeForm>) -> Response {
    let set = async {
        let p = st.inv.propose_network(&f.name, true).await?;
        st.inv.set_network(&f.name, p, false).await
    };
    let r = said(set.await, |n| format!("Node {} gets {}.", f.name, crate::wizard::network_line(&n)));
    admin.done_at(&edit_path(&f.name), r)
}

fn iface_row(k: usize, i: Option<&NetInterface>) -> Markup {
    let v = |x: Option<&str>| x.unwrap_or("").to_string();
    let id = |f: &str| format!("if-{k}-{f}");
    html! {
        fieldset.iface {
            legend { @if i.is_some() { "Interface " (k + 1) } @else { "Add an interface" } }
            label for=(id("role")) { "Network (private, public, or a name)" }
            input id=(id("role")) type="text" name=(id("role")) value=(v(i.map(|i| i.role.as_str()))) pattern="[a-z][a-z0-9-]{0,31}";
            label for=(id("name")) { "Interface name" }
            input id=(id("name")) type="text" name=(id("name")) value=(v(i.and_then(|i| i.name.as_deref()))) placeholder="ens3";
            label for=(id("mac")) { "MAC" }
            input id=(id("mac")) type="text" name=(id("mac")) value=(v(i.and_then(|i| i.mac.as_deref())));
            label for=(id("addresses")) { "Addresses with prefix (comma-separated)" }
            input id=(id("addresses")) type="text" name=(id("addresses")) value=(i.map(|i| i.addresses.join(", ")).unwrap_or_default()) placeholder="10.0.0.2/24";
            label for=(id("gateway")) { "Gateway" }
            input id=(id("gateway")) type="text" name=(id("gateway")) value=(v(i.and_then(|i| i.gateway.as_deref())));
            label for=(id("dns")) { "DNS servers (comma-separated)" }
            input id=(id("dns")) type="text" name=(id("dns")) value=(i.map(|i| i.dns.join(", ")).unwrap_or_default());
        }
    }
}

/// The edit page; `error` is why the last save was refused (the form shows what was typed).
pub fn edit(ctx: &Ctx, f: &NodeForm, images: &[String], error: Option<&str>) -> Markup {
    pages::layout(
        ctx,
        Page::Nodes,
        html! {
            h2 #h-edit { "Edit node " (f.name) }
            @if let Some(e) = error { p.flash.error role="alert" #edit-error { (e) } }
            form.stack.edit method="post" action="/console/nodes/edit" aria-labelledby="h-edit" {
                (csrf_field(&ctx.csrf))
                input type="hidden" name="name" value=(f.name);
                label for="edit-role" { "Role" }
                select #edit-role name="role" {
                    @for r in ["standby", "compute"] { option value=(r) selected[f.role == r] { (r) } }
                }
                label for="edit-image" { "Image" }
                select #edit-image name="image" {
                    option value="" selected[f.image.is_empty()] { "(none)" }
                    @if !f.image.is_empty() && !images.contains(&f.image) { option value=(f.image) selected { (f.image) } }
                    @for n in images { option value=(n) selected[*n == f.image] { (n) } }
                }
                label for="edit-macs" { "MAC addresses (comma-separated)" }
                input #edit-macs type="text" name="macs" value=(f.macs);
                h3 { "Network identity" }
                p.hint { "The standby's own addresses, written into whichever network configuration its image uses. Checked when saved: against the primary's addresses and DHCP pool, every other node and lease, and what answers on the LAN." }
                @for (k, i) in f.interfaces.iter().enumerate() { (iface_row(k, Some(i))) }
                @for k in f.interfaces.len()..f.interfaces.len() + SPARE_ROWS { (iface_row(k, None)) }
                label.check {
                    input type="checkbox" name="force" checked[f.force];
                    " Deploy even where the image's network configuration cannot be fully rewritten"
                }
                button type="submit" { "Save " (f.name) }
            }
            form.inline method="post" action="/console/nodes/propose" {
                (csrf_field(&ctx.csrf))
                input type="hidden" name="name" value=(f.name);
                button.quiet type="submit" { "Set the identity proposed from the primary's networks" }
            }
            p { a href=(Page::Nodes.path()) { "Back to the nodes" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{NodeState, Role};

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn a_posted_form_reads_back_and_blank_rows_drop() {
        let f = NodeForm::parse(&pairs(&[
            ("csrf", "x"),
            ("name", "n1"),
            ("role", "standby"),
            ("image", "base@2"),
            ("macs", "52:54:00:00:00:01, 52:54:00:00:00:02"),
            ("if-0-role", "private"),
            ("if-0-name", "ens3"),
            ("if-0-addresses", "10.0.0.5/24, fd00::5/64"),
            ("if-0-dns", "10.0.0.1"),
            ("if-1-role", ""),
            ("if-1-name", ""),
            ("force", "on"),
        ]));
        assert_eq!(f.mac_list(), ["52:54:00:00:00:01", "52:54:00:00:00:02"]);
        assert_eq!(f.interfaces.len(), 1, "{f:?}");
        assert_eq!(f.interfaces[0].addresses, ["10.0.0.5/24", "fd00::5/64"]);
        assert_eq!(f.interfaces[0].name.as_deref(), Some("ens3"));
        assert_eq!(f.interfaces[0].gateway, None);
        assert!(f.force);
        let node = Node {
            name: "n1".into(),
            role: Role::Standby,
            image: Some("base@2".into()),
            state: NodeState::Deployed,
            macs: vec!["52:54:00:00:00:01".into()],
            ips: vec![],
            created: String::new(),
            updated: String::new(),
        };
        let p = patch(&node, &f).unwrap();
        assert_eq!((p.role, p.image), (None, None), "unchanged fields are not sent");
        assert_eq!(p.macs.unwrap().len(), 2);
        let same = NodeForm { macs: "52:54:00:00:00:01".into(), ..f.clone() };
        assert!(patch(&node, &same).is_none());
    }

    #[test]
    fn the_form_escapes_and_carries_csrf() {
        let ctx = Ctx { csrf: "tok".into(), flash: None };
        let f = NodeForm { name: "n<b>".into(), role: "compute".into(), ..NodeForm::default() };
        let h = edit(&ctx, &f, &["base".into()], Some("<i>no</i>")).into_string();
        assert!(h.contains("n&lt;b&gt;") && !h.contains("n<b>"), "{h}");
        assert!(h.contains("&lt;i&gt;no&lt;/i&gt;"), "{h}");
        assert_eq!(h.matches("<form").count(), h.matches(r#"name="csrf" value="tok""#).count());
        assert!(h.contains(r#"<label for="if-0-addresses">"#), "every input has a label: {h}");
    }
}
