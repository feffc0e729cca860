//! Who streams what to whom: all-to-all, star and ring, and routing around a dead forwarder.

use serde::{Deserialize, Serialize};

use super::ids::DcId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topology {
    /// Each DC sends its own changes to every other DC.
    AllToAll,
    /// Spokes send their own changes to the hub; the hub forwards everything to every spoke except
    /// the change's origin. With the hub dead, spokes send their own changes to each other.
    Star { hub: DcId },
    /// Each DC sends everything to the next live DC in ring order, except changes whose origin is
    /// that DC.
    Ring { order: Vec<DcId> },
}

/// Where a DC streams now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// The DCs this DC keeps a link to.
    pub send_to: Vec<DcId>,
    /// DCs this DC's own changes cannot reach at all right now (to report).
    pub unreachable: Vec<DcId>,
}

impl Topology {
    /// The DCs `this` streams to now, given which DCs are reachable (`alive(dc)`), and the DCs its
    /// own changes cannot reach at all right now (to report).
    pub fn routes(&self, this: DcId, all: &[DcId], alive: &dyn Fn(DcId) -> bool) -> Routes {
        let others = || all.iter().copied().filter(move |&dc| dc != this);
        let dead: Vec<DcId> = others().filter(|&dc| !alive(dc)).collect();
        if !all.contains(&this) {
            return Routes { send_to: Vec::new(), unreachable: others().collect() };
        }
        let send_to = match self {
            Topology::AllToAll => others().filter(|&dc| alive(dc)).collect(),
            Topology::Star { hub } if *hub == this => others().filter(|&dc| alive(dc)).collect(),
            Topology::Star { hub } if all.contains(hub) && alive(*hub) => vec![*hub],
            // The hub is dead (or not a member): spokes talk to each other directly.
            Topology::Star { .. } => others().filter(|&dc| alive(dc)).collect(),
            Topology::Ring { order } => ring_successor(order, this, all, alive).into_iter().collect(),
        };
        // Every topology reaches every live DC (directly or through live forwarders), so what is
        // unreachable is exactly what is dead; a ring missing `this` reaches nothing.
        let unreachable = match self {
            Topology::Ring { order } if !order.contains(&this) => others().collect(),
            _ => dead,
        };
        Routes { send_to, unreachable }
    }

    /// Whether `this` sends a change of `origin` on its link to `to` (never when origin == to).
    pub fn forwards(&self, this: DcId, origin: DcId, to: DcId, all: &[DcId], alive: &dyn Fn(DcId) -> bool) -> bool {
        if origin == to || to == this || !self.routes(this, all, alive).send_to.contains(&to) {
            return false;
        }
        match self {
            Topology::AllToAll => origin == this,
            // The hub forwards everything; a spoke sends only its own changes (to the hub, or to
            // the other spokes while the hub is dead).
            Topology::Star { hub } => this == *hub || origin == this,
            Topology::Ring { .. } => true,
        }
    }
}

/// The next DC after `this` in `order` that is a member and alive (`None` if there is none).
fn ring_successor(order: &[DcId], this: DcId, all: &[DcId], alive: &dyn Fn(DcId) -> bool) -> Option<DcId> {
    let at = order.iter().position(|&dc| dc == this)?;
    (1..order.len())
        .map(|step| order[(at + step) % order.len()])
        .find(|&dc| dc != this && all.contains(&dc) && alive(dc))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: DcId = DcId(1);
    const B: DcId = DcId(2);
    const C: DcId = DcId(3);
    const D: DcId = DcId(4);
    const ALL: [DcId; 4] = [A, B, C, D];

    fn everyone(_: DcId) -> bool {
        true
    }

    #[test]
    fn all_to_all_sends_only_own_changes_to_every_live_dc() {
        let topology = Topology::AllToAll;
        assert_eq!(topology.routes(A, &ALL, &everyone).send_to, vec![B, C, D]);
        let c_dead = |dc: DcId| dc != C;
        let routes = topology.routes(A, &ALL, &c_dead);
        assert_eq!(routes.send_to, vec![B, D]);
        assert_eq!(routes.unreachable, vec![C]);
        assert!(topology.forwards(A, A, B, &ALL, &everyone));
        assert!(!topology.forwards(A, C, B, &ALL, &everyone), "all-to-all never forwards others' changes");
    }

    #[test]
    fn star_hub_forwards_everything_except_back_to_the_origin() {
        let topology = Topology::Star { hub: A };
        assert_eq!(topology.routes(A, &ALL, &everyone).send_to, vec![B, C, D]);
        assert_eq!(topology.routes(B, &ALL, &everyone).send_to, vec![A]);
        assert!(topology.forwards(A, B, C, &ALL, &everyone));
        assert!(!topology.forwards(A, B, B, &ALL, &everyone), "never back to the origin");
        assert!(topology.forwards(B, B, A, &ALL, &everyone));
        assert!(!topology.forwards(B, C, A, &ALL, &everyone), "a spoke sends only its own changes");
    }

    #[test]
    fn star_with_a_dead_hub_routes_spokes_to_each_other() {
        let topology = Topology::Star { hub: A };
        let hub_dead = |dc: DcId| dc != A;
        let routes = topology.routes(B, &ALL, &hub_dead);
        assert_eq!(routes.send_to, vec![C, D]);
        assert_eq!(routes.unreachable, vec![A]);
        assert!(topology.forwards(B, B, C, &ALL, &hub_dead));
        assert!(!topology.forwards(B, D, C, &ALL, &hub_dead), "spokes send only their own changes");
    }

    #[test]
    fn ring_sends_everything_to_the_successor_except_its_own() {
        let topology = Topology::Ring { order: vec![A, B, C, D] };
        assert_eq!(topology.routes(A, &ALL, &everyone).send_to, vec![B]);
        assert_eq!(topology.routes(D, &ALL, &everyone).send_to, vec![A]);
        assert!(topology.forwards(A, C, B, &ALL, &everyone));
        assert!(topology.forwards(A, A, B, &ALL, &everyone));
        assert!(!topology.forwards(A, B, B, &ALL, &everyone), "B's changes never go back to B");
        assert!(!topology.forwards(A, A, C, &ALL, &everyone), "C is not A's successor");
    }

    #[test]
    fn ring_routes_around_a_dead_forwarder() {
        let topology = Topology::Ring { order: vec![A, B, C, D] };
        let b_dead = |dc: DcId| dc != B;
        let routes = topology.routes(A, &ALL, &b_dead);
        assert_eq!(routes.send_to, vec![C]);
        assert_eq!(routes.unreachable, vec![B]);
        assert!(topology.forwards(A, D, C, &ALL, &b_dead));
        let only_a = |dc: DcId| dc == A;
        let alone = topology.routes(A, &ALL, &only_a);
        assert!(alone.send_to.is_empty());
        assert_eq!(alone.unreachable, vec![B, C, D]);
    }
}

/// A topology's shape without its parameters (the hub, the ring order): what a configuration file
/// or a command-line flag names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyKind {
    /// Every DC sends its own changes to every other DC (the default).
    #[default]
    AllToAll,
    /// Spokes send to the hub, which forwards to every other spoke.
    Star,
    /// Each DC sends everything to the next one in ring order.
    Ring,
}

impl std::str::FromStr for TopologyKind {
    type Err = String;

    fn from_str(text: &str) -> Result<TopologyKind, String> {
        match text {
            "all-to-all" => Ok(TopologyKind::AllToAll),
            "star" => Ok(TopologyKind::Star),
            "ring" => Ok(TopologyKind::Ring),
            other => Err(format!("invalid topology '{other}': expected all-to-all, star or ring")),
        }
    }
}

impl std::fmt::Display for TopologyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopologyKind::AllToAll => "all-to-all",
            TopologyKind::Star => "star",
            TopologyKind::Ring => "ring",
        })
    }
}
