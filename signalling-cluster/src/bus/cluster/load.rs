//! Producer load for placement (`routing/placement.rs`): every liveness tick, the sessions each
//! local producer serves, announced on the presence channel when they changed. At most four
//! announcements a second per producer, however fast viewers come and go.

use std::collections::HashMap;

use proto::envelope::ProducerLoadBody;
use proto::PeerId;

use super::publisher::Outgoing;
use super::Shared;

impl Shared {
    /// Announces the loads that changed since `last` (which it updates).
    pub(super) fn announce_loads(&self, last: &mut HashMap<PeerId, usize>) {
        let now = self.state.lock().router.local_loads();
        let current: std::collections::HashSet<&PeerId> = now.iter().map(|(id, _)| id).collect();
        last.retain(|id, _| current.contains(id));
        for (peer_id, sessions) in now {
            if last.get(&peer_id) != Some(&sessions) {
                last.insert(peer_id.clone(), sessions);
                self.publish(Outgoing::Load(ProducerLoadBody { peer_id, sessions }));
            }
        }
    }
}
