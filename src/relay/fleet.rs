//! Choosing a relay from a fleet by rendezvous (highest-random-weight) hashing.
//!
//! Both peers of a transfer know the same relay list and the same rendezvous id, so they
//! compute the same choice with no coordinator and no shared state: each relay's weight
//! is a keyed BLAKE3 of (rendezvous id, relay address as written), and the highest wins.
//! Removing a relay moves only the rendezvous ids it had; adding one takes only its share.

/// Picks the relay for `rendezvous` from `relays` (addresses as written in the list).
/// `None` if the list is empty.
pub fn choose<'a, S: AsRef<str>>(relays: &'a [S], rendezvous: &[u8; 32]) -> Option<&'a S> {
    relays
        .iter()
        .max_by(|x, y| weight(x.as_ref(), rendezvous).cmp(&weight(y.as_ref(), rendezvous)))
}

fn weight<'a>(relay: &'a str, rendezvous: &[u8; 32]) -> (u64, &'a str) {
    let mut h = blake3::Hasher::new_derive_key("phi-conduit v1 relay fleet hrw");
    h.update(rendezvous);
    h.update(relay.trim().as_bytes());
    let mut w = [0u8; 8];
    w.copy_from_slice(&h.finalize().as_bytes()[..8]);
    // The address breaks (astronomically unlikely) ties, so the order of the list never
    // matters.
    (u64::from_be_bytes(w), relay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| blake3::hash(&i.to_be_bytes()).into())
            .collect()
    }

    const FLEET: [&str; 4] = [
        "relay-a.example.org:7471",
        "relay-b.example.org:7471",
        "relay-c.example.org:7471",
        "10.0.0.4:7471",
    ];

    #[test]
    fn both_peers_pick_the_same_relay_whatever_the_list_order() {
        let mut reversed = FLEET;
        reversed.reverse();
        for id in ids(500) {
            assert_eq!(choose(&FLEET, &id), choose(&reversed, &id));
        }
        assert_eq!(choose::<&str>(&[], &[0; 32]), None);
    }

    #[test]
    fn load_is_spread_over_the_fleet() {
        let mut counts = std::collections::HashMap::new();
        for id in ids(4000) {
            *counts.entry(*choose(&FLEET, &id).unwrap()).or_insert(0u32) += 1;
        }
        for r in FLEET {
            let n = counts[r];
            assert!((800..1200).contains(&n), "{r} got {n} of 4000");
        }
    }

    #[test]
    fn removing_a_relay_moves_only_its_share() {
        let smaller = &FLEET[..3];
        let mut moved = 0;
        for id in ids(4000) {
            let before = *choose(&FLEET, &id).unwrap();
            let after = *choose(smaller, &id).unwrap();
            if before == FLEET[3] {
                moved += 1;
                assert_ne!(after, FLEET[3]);
            } else {
                assert_eq!(before, after, "an id not on the removed relay moved");
            }
        }
        assert!(moved > 0);
    }
}
