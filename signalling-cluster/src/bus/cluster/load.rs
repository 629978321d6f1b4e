//! Producer load for placement (`routing/placement.rs`): every liveness tick, the sessions each
//! local producer serves, announced on the presence channel when they changed. At most four
//! announcements a second per producer, however fast viewers come and go. With the count goes
//! whether the producer is away (its connection dropped, kept for a resume).

use std::collections::HashMap;

use proto::envelope::ProducerLoadBody;
use proto::PeerId;

use super::publisher::Outgoing;
use super::Shared;
use crate::routing::Load;

impl Shared {
    /// Announces the loads that changed since `last` (which it updates).
    pub(super) fn announce_loads(&self, last: &mut HashMap<PeerId, Load>) {
        let now = self.state.lock().router.local_loads();
        let current: std::collections::HashSet<&PeerId> = now.iter().map(|(id, _)| id).collect();
        last.retain(|id, _| current.contains(id));
        for (peer_id, load) in now {
            if last.get(&peer_id) != Some(&load) {
                last.insert(peer_id.clone(), load);
                self.publish(Outgoing::Load(ProducerLoadBody {
                    peer_id,
                    sessions: load.sessions,
                    away: load.away,
                }));
            }
        }
    }
}
