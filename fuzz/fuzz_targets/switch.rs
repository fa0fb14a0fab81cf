//! The relay's datagram switch on hostile datagrams: one granted pair (clients at A and
//! B) and datagrams from A, B or a third address C, each with the bytes the fuzzer
//! chose. Never a panic; a datagram is forwarded only from the bound address of the id
//! it carries, only to the peer's bound address, with the peer's id, never larger.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use phi_conduit::relay::switch::{Switch, SwitchLimits};
use phi_conduit::wire::wrap;

fuzz_target!(|data: &[u8]| {
    let addrs: [SocketAddr; 3] = [
        ([192, 0, 2, 1], 4000).into(),
        ([198, 51, 100, 7], 5000).into(),
        ([203, 0, 113, 9], 4000).into(),
    ];
    let t0 = Instant::now();
    let mut s = Switch::new(SwitchLimits {
        max_allocations: 4,
        max_bytes: 1 << 20,
        rate: 1 << 20,
        burst: 64 << 10,
        idle: Duration::from_secs(30),
    });
    let Ok(pair) = s.grant(addrs[0], addrs[1], t0) else {
        return;
    };
    // Each record: a source byte, a length byte, then that many bytes (the id of the
    // pair is spliced in when the source byte says so, so valid ids get exercised).
    let mut first_at = addrs[0];
    let mut rest = data;
    let mut step = 0u64;
    while let Some((&[src, len, pick], tail)) = rest.split_first_chunk::<3>() {
        let n = usize::from(len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        step += 1;
        let from = addrs[usize::from(src % 3)];
        let mut d = body.to_vec();
        if pick & 1 == 1 && d.len() > wrap::HEADER_LEN {
            let id = if pick & 2 == 0 {
                pair.first
            } else {
                pair.second
            };
            d[0] = wrap::WRAPPED;
            d[1..9].copy_from_slice(&id.to_be_bytes());
        }
        let before = d.clone();
        let now = t0 + Duration::from_millis(step);
        match s.forward(from, &mut d, now) {
            Ok(to) => {
                assert_eq!(d.len(), before.len());
                let (id, inner) = wrap::parse(&before).expect("forwarded a non-wrapped packet");
                let (out, out_inner) =
                    wrap::parse(&d).expect("forwarded into a non-wrapped packet");
                assert_eq!(inner, out_inner);
                if id == pair.first {
                    assert_eq!((from, to, out), (first_at, addrs[1], pair.second));
                } else {
                    assert_eq!(id, pair.second);
                    assert_eq!((from, to, out), (addrs[1], first_at, pair.first));
                }
            }
            Err(_) => assert_eq!(d, before),
        }
        if pick == 0xff {
            s.release(pair.second);
        }
        if pick == 0xfe {
            if s.rebind(pair.first, addrs[2]) {
                first_at = addrs[2];
            }
        }
    }
    assert!(s.allocations() <= 2);
});
