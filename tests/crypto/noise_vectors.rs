//! snow, as configured by this project, against the cacophony Noise vectors for the two
//! patterns we use (tests/data/noise/cacophony_subset.json, origin in its `source`).

use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    protocol_name: String,
    init_prologue: String,
    init_static: Option<String>,
    init_ephemeral: String,
    init_remote_static: Option<String>,
    init_psks: Option<Vec<String>>,
    resp_prologue: String,
    resp_static: Option<String>,
    resp_ephemeral: String,
    resp_psks: Option<Vec<String>>,
    handshake_hash: String,
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    payload: String,
    ciphertext: String,
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn cacophony_vectors_for_ik_and_xxpsk3() {
    let file: File =
        serde_json::from_str(include_str!("../data/noise/cacophony_subset.json")).unwrap();
    let names: Vec<&str> = file
        .vectors
        .iter()
        .map(|v| v.protocol_name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "Noise_IK_25519_ChaChaPoly_BLAKE2s",
            "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s"
        ]
    );
    for v in &file.vectors {
        let params: snow::params::NoiseParams = v.protocol_name.parse().unwrap();
        let (ip, ie, rp, re) = (
            h(&v.init_prologue),
            h(&v.init_ephemeral),
            h(&v.resp_prologue),
            h(&v.resp_ephemeral),
        );
        let (is, rs) = (
            v.init_static.as_deref().map(h),
            v.resp_static.as_deref().map(h),
        );
        let irs = v.init_remote_static.as_deref().map(h);
        let ipsk: Vec<Vec<u8>> = v.init_psks.iter().flatten().map(|p| h(p)).collect();
        let rpsk: Vec<Vec<u8>> = v.resp_psks.iter().flatten().map(|p| h(p)).collect();

        let mut ib = snow::Builder::new(params.clone())
            .prologue(&ip)
            .fixed_ephemeral_key_for_testing_only(&ie);
        if let Some(k) = &is {
            ib = ib.local_private_key(k);
        }
        if let Some(k) = &irs {
            ib = ib.remote_public_key(k);
        }
        if let Some(p) = ipsk.first() {
            ib = ib.psk(3, p);
        }
        let mut rb = snow::Builder::new(params)
            .prologue(&rp)
            .fixed_ephemeral_key_for_testing_only(&re);
        if let Some(k) = &rs {
            rb = rb.local_private_key(k);
        }
        if let Some(p) = rpsk.first() {
            rb = rb.psk(3, p);
        }
        let mut init = ib.build_initiator().unwrap();
        let mut resp = rb.build_responder().unwrap();
        let mut buf = vec![0u8; 65535];
        let mut out = vec![0u8; 65535];
        let mut i = 0;
        // Handshake messages alternate initiator, responder, ...
        while !(init.is_handshake_finished() && resp.is_handshake_finished()) {
            let m = &v.messages[i];
            let (w, r) = if i % 2 == 0 {
                (&mut init, &mut resp)
            } else {
                (&mut resp, &mut init)
            };
            let n = w.write_message(&h(&m.payload), &mut buf).unwrap();
            assert_eq!(
                hex::encode(&buf[..n]),
                m.ciphertext,
                "{} message {i}",
                v.protocol_name
            );
            let k = r.read_message(&buf[..n], &mut out).unwrap();
            assert_eq!(hex::encode(&out[..k]), m.payload);
            i += 1;
        }
        assert_eq!(
            hex::encode(init.get_handshake_hash()),
            v.handshake_hash,
            "{}",
            v.protocol_name
        );
        assert_eq!(resp.get_handshake_hash(), init.get_handshake_hash());
        let mut it = init.into_transport_mode().unwrap();
        let mut rt = resp.into_transport_mode().unwrap();
        // Transport messages continue the alternation.
        for (j, m) in v.messages.iter().enumerate().skip(i) {
            let (w, r) = if j % 2 == 0 {
                (&mut it, &mut rt)
            } else {
                (&mut rt, &mut it)
            };
            let n = w.write_message(&h(&m.payload), &mut buf).unwrap();
            assert_eq!(
                hex::encode(&buf[..n]),
                m.ciphertext,
                "{} transport {j}",
                v.protocol_name
            );
            let k = r.read_message(&buf[..n], &mut out).unwrap();
            assert_eq!(hex::encode(&out[..k]), m.payload);
        }
    }
}
