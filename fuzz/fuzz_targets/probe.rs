//! Path probes and candidate lists on hostile bytes: the candidate decoder and the probe
//! check never panic and accept only what their encoders make; a client's path, armed
//! with a session key, answers only a probe that verifies (in place, to where it came
//! from, never larger) and moves its packets only to an address it probed.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use phi_conduit::transport::demux::{Divert, Route, Verdict};
use phi_conduit::transport::path::RelayPath;
use phi_conduit::wire::probe::{self, Role};
use phi_conduit::wire::wrap;

const KEY: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    if let Some(list) = probe::decode_candidates(data) {
        assert_eq!(probe::encode_candidates(&list), data);
    }
    if let Some(p) = probe::verify(&KEY, data) {
        assert_eq!(&probe::encode(&KEY, p.kind, p.role, p.txid)[..], data);
    }

    let relay: SocketAddr = ([192, 0, 2, 7], 7471).into();
    let sources: [SocketAddr; 3] = [
        relay,
        ([198, 18, 1, 6], 40000).into(),
        ([198, 18, 1, 9], 40000).into(),
    ];
    let path = RelayPath::new(relay, ([0, 0, 0, 0], 0).into());
    path.grant(42);
    path.arm(KEY, Role::Client);
    let mut probed = Vec::new();
    // Each record: a source byte, a length byte, a shape byte, then that many bytes (a
    // valid probe or reply for a recent txid is made when the shape says so).
    let mut rest = data;
    while let Some((&[src, len, shape], tail)) = rest.split_first_chunk::<3>() {
        let n = usize::from(len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let from = sources[usize::from(src % 3)];
        if shape & 0x80 != 0 {
            if let Some(p) = path.probe_for(from) {
                probed.push(from);
                if let Some(got) = probe::verify(&KEY, &p) {
                    let kind = if shape & 1 == 0 { probe::REPLY } else { probe::PROBE };
                    let mut d = probe::encode(&KEY, kind, Role::Server, got.txid).to_vec();
                    let _ = path.datagram(from, wrap::classify(&d), &mut d);
                }
            }
            continue;
        }
        let mut d = body.to_vec();
        let before = d.len();
        match path.datagram(from, wrap::classify(&d), &mut d) {
            Verdict::Send(to) => {
                assert_eq!(to, from);
                assert_eq!(d.len(), before);
            }
            Verdict::Deliver(at) => assert_eq!(at, path.mapped()),
            Verdict::Drop => {}
        }
    }
    match path.route(path.mapped()) {
        Route::To(direct) => assert!(probed.contains(&direct)),
        Route::Wrapped(to, id) => assert_eq!((to, id), (relay, 42)),
        Route::AsIs => unreachable!("granted"),
    }
});
