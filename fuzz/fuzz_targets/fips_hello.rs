//! FIPS mode's hello and answer (`crypto::fips_session`) and FIPS pin text (the address
//! book's `fips`): never a panic; a hello that reads gives back a suite the policy
//! accepts and the transfer id it carries; an answer that reads names a suite that was
//! offered; a pin that parses prints as the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::crypto::fips_identity::FipsPin;
use phi_conduit::crypto::fips_session::{read_answer, read_hello};
use phi_conduit::crypto::suite::{Suite, SuitePolicy};

fuzz_target!(|data: &[u8]| {
    for policy in [SuitePolicy::Auto, SuitePolicy::Only(Suite::Aes256GcmRandomIv)] {
        if let Ok((id, suite)) = read_hello(data, policy) {
            assert_eq!(&data[2..18], &id[..]);
            if let SuitePolicy::Only(s) = policy {
                assert_eq!(suite, s);
            }
        }
        if let Ok(suite) = read_answer(data, policy) {
            assert!(policy.offer().contains(&suite));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(pin) = FipsPin::parse(text) {
            assert_eq!(pin.to_string(), text.trim());
        }
    }
});
