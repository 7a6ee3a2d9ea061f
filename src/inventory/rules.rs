//! The node and deployment rules as plain functions: what state a node starts in, what
//! a change of image, a redeploy, a network boot or a progress report does to it, and
//! which deployment status changes are allowed. The inventory applies them; nothing else
//! decides a transition.
//!
//! ```text
//!  discovered ──image set──▶ assigned ──network boot──▶ deploying ──done──▶ deployed
//!                              ▲                            │                  │
//!                              └──────── redeploy ──────────┴── failed ◀───────┘
//! ```
//! (`failed` comes from a failed report; `redeploy` takes any node with an image back to
//! `assigned`; the admin may also set a state by hand.)

use crate::wire::{DeploymentStatus, NodeState, ProgressStatus};

/// Why a rule refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Redeploy of a node without an image.
    #[error("node {0} has no image to deploy")]
    NoImage(String),
    /// Progress for a finished deployment.
    #[error("deployment {0} is already {1}")]
    Finished(i64, DeploymentStatus),
}

/// A new node's state: assigned when it has an image to deploy, else discovered.
pub fn initial_state(has_image: bool) -> NodeState {
    if has_image { NodeState::Assigned } else { NodeState::Discovered }
}

/// A node's state after its image is set (or cleared): a discovered node with an image
/// becomes assigned; any other state stays.
pub fn after_image_set(state: NodeState, has_image: bool) -> NodeState {
    if has_image && state == NodeState::Discovered { NodeState::Assigned } else { state }
}

/// Redeploy: any node with an image goes back to assigned.
pub fn redeploy(node: &str, has_image: bool) -> Result<NodeState, RuleError> {
    if has_image { Ok(NodeState::Assigned) } else { Err(RuleError::NoImage(node.into())) }
}

/// A network boot into a deployment puts the node in deploying.
pub const BOOTED: NodeState = NodeState::Deploying;

/// A progress report: the deployment's new status and the node's new state, unless the
/// deployment is already finished.
pub fn progress(
    id: i64,
    current: DeploymentStatus,
    report: ProgressStatus,
) -> Result<(DeploymentStatus, NodeState), RuleError> {
    if current.is_final() {
        return Err(RuleError::Finished(id, current));
    }
    let node = match report {
        ProgressStatus::Running => NodeState::Deploying,
        ProgressStatus::Done => NodeState::Deployed,
        ProgressStatus::Failed => NodeState::Failed,
    };
    Ok((report.into(), node))
}

/// What a network-booting machine should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPlan {
    /// Start a deployment of the node's image: boot the deploy environment.
    Deploy,
    /// The node is deployed: boot from its disk.
    Local,
    /// Nothing to do yet: say why and ask again later.
    Wait(String),
}

/// The boot decision for a MAC: its node (name, state, whether it has an image), if it
/// belongs to one, and whether MAC collection is on.
pub fn boot_plan(node: Option<(&str, NodeState, bool)>, collecting: bool) -> BootPlan {
    let Some((name, state, has_image)) = node else {
        return BootPlan::Wait(if collecting {
            "this machine is not a node yet; its MAC was collected: assign it with `understudy nodes add`".into()
        } else {
            "this machine is not a node; turn on MAC collection or add it with `understudy nodes add`".into()
        });
    };
    match state {
        NodeState::Deployed => BootPlan::Local,
        NodeState::Failed => BootPlan::Wait(format!(
            "the last deployment of node {name} failed; see `understudy events --node {name}`, then `understudy nodes redeploy {name}`"
        )),
        s if s.netboots() && has_image => BootPlan::Deploy,
        _ => BootPlan::Wait(format!(
            "node {name} has no image to deploy; set one with `understudy nodes set {name} --image NAME`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeState::*;

    #[test]
    fn node_states_follow_the_rules() {
        assert_eq!(initial_state(true), Assigned);
        assert_eq!(initial_state(false), Discovered);
        assert_eq!(after_image_set(Discovered, true), Assigned);
        assert_eq!(after_image_set(Deployed, true), Deployed);
        assert_eq!(after_image_set(Discovered, false), Discovered);
        assert_eq!(redeploy("n", true), Ok(Assigned));
        assert_eq!(redeploy("n", false).unwrap_err().to_string(), "node n has no image to deploy");
    }

    #[test]
    fn progress_moves_deployment_and_node_until_final() {
        use DeploymentStatus as D;
        assert_eq!(progress(1, D::Pending, ProgressStatus::Running), Ok((D::Running, Deploying)));
        assert_eq!(progress(1, D::Running, ProgressStatus::Done), Ok((D::Done, Deployed)));
        assert_eq!(progress(1, D::Running, ProgressStatus::Failed), Ok((D::Failed, Failed)));
        for fin in [D::Done, D::Failed] {
            assert_eq!(progress(7, fin, ProgressStatus::Running), Err(RuleError::Finished(7, fin)));
        }
    }

    #[test]
    fn plans_follow_the_state() {
        let p = |s, img| boot_plan(Some(("standby", s, img)), false);
        assert_eq!(p(Assigned, true), BootPlan::Deploy);
        assert_eq!(p(Deploying, true), BootPlan::Deploy);
        assert_eq!(p(Deployed, true), BootPlan::Local);
        assert!(matches!(p(Failed, true), BootPlan::Wait(m) if m.contains("redeploy")));
        assert!(matches!(p(Discovered, false), BootPlan::Wait(m) if m.contains("no image")));
        assert!(matches!(p(Assigned, false), BootPlan::Wait(_)));
        assert!(matches!(boot_plan(None, true), BootPlan::Wait(m) if m.contains("collected")));
        assert!(matches!(boot_plan(None, false), BootPlan::Wait(m) if m.contains("turn on MAC collection")));
    }
}
