//! FIPS mode: whether this build runs its cryptography on the AWS-LC FIPS module, and
//! the checks a FIPS process makes before it does anything else (docs/FIPS.md).
//!
//! A build with the cargo feature `fips` links aws-lc-rs against `aws-lc-fips-sys`, the
//! AWS-LC FIPS module, and restricts rustls (the QUIC hops) to the module's approved TLS
//! 1.3 suites and key exchange groups. Such a build is *in FIPS mode*: [`check`] must
//! pass at start (the module reports FIPS mode and its power-on self-tests pass), or the
//! process refuses to run. A default build is never in FIPS mode, and says so.
//!
//! ```
//! use phi_conduit::crypto::fips;
//!
//! let status = fips::status();
//! assert_eq!(status.fips_mode, fips::ENABLED);
//! if !fips::ENABLED {
//!     assert!(fips::check().is_ok()); // nothing to check in a default build
//! }
//! ```

use serde::Serialize;
use thiserror::Error;

/// True in a build with the cargo feature `fips`.
pub const ENABLED: bool = cfg!(feature = "fips");

/// The FIPS mode checks failed: a FIPS build that must not run.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FipsError {
    /// The module does not report FIPS mode (the build is not linked against the FIPS
    /// module, or its integrity test failed).
    #[error(
        "this binary was built for FIPS mode but the cryptographic module is not in FIPS \
         mode ({0}); refusing to run (docs/FIPS.md, \"Verifying a build\")"
    )]
    NotInFipsMode(String),
    /// The module's known-answer self-tests failed.
    #[error(
        "the FIPS module's self-tests failed; refusing to run (docs/FIPS.md, \"Verifying a \
         build\")"
    )]
    SelfTest,
}

/// Something asked of a FIPS build that FIPS mode does not allow (a code phrase: SPAKE2
/// is not approved; ChaCha20-Poly1305; a peer that does not speak the FIPS session).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("not allowed in FIPS mode: {0} (docs/FIPS.md)")]
pub struct NotApproved(pub String);

impl NotApproved {
    /// Refuses `what` in a FIPS build; `Ok` in a default build.
    pub fn refuse_in_fips(what: impl FnOnce() -> String) -> Result<(), NotApproved> {
        if ENABLED {
            Err(NotApproved(what()))
        } else {
            Ok(())
        }
    }
}

/// Refuses, in a FIPS build, a send that would not run FIPS mode's session: to a code
/// phrase (SPAKE2 is not approved), to a recipient without a FIPS pin, or under a suite
/// policy naming a suite FIPS mode does not allow. In a default build, refuses only a
/// [`Recipient::Fips`](crate::transfer::Recipient::Fips) (the FIPS session needs a
/// FIPS build).
pub fn refuse_session(
    to: &crate::transfer::Recipient,
    suites: crate::crypto::suite::SuitePolicy,
) -> Result<(), NotApproved> {
    use crate::transfer::Recipient;
    match to {
        Recipient::Code(_) => refuse_code(true)?,
        Recipient::Known(_) if ENABLED => {
            return Err(NotApproved(
                "the recipient has no FIPS pin: FIPS mode authenticates peers by their \
                 P-256 keys (`conduit peers fips NAME PIN`)"
                    .into(),
            ));
        }
        Recipient::Fips { .. } if !ENABLED => {
            return Err(NotApproved(
                "the FIPS session needs a FIPS build (cargo feature `fips`)".into(),
            ));
        }
        _ => {}
    }
    refuse_suite(suites)
}

/// Refuses a code phrase in a FIPS build (SPAKE2 is not an approved algorithm).
pub fn refuse_code(code: bool) -> Result<(), NotApproved> {
    if code {
        NotApproved::refuse_in_fips(|| {
            "a code phrase (SPAKE2 is not an approved algorithm): pin the peer's keys with \
             `conduit peers add NAME KEY --fips PIN` instead"
                .into()
        })
    } else {
        Ok(())
    }
}

/// Refuses, in a FIPS build, a suite policy that names a suite FIPS mode does not allow.
pub fn refuse_suite(suites: crate::crypto::suite::SuitePolicy) -> Result<(), NotApproved> {
    match suites {
        crate::crypto::suite::SuitePolicy::Only(s) if !s.approved_in_fips_mode() => {
            NotApproved::refuse_in_fips(|| {
                format!(
                    "the cipher suite {s} (FIPS mode seals with aes-256-gcm-random-iv: \
                     module-generated IVs)"
                )
            })
        }
        _ => Ok(()),
    }
}

/// What this build and its cryptographic module are, for `conduit --version`, `conduit
/// id` and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The build runs in FIPS mode (cargo feature `fips`) and the module reports it.
    pub fips_mode: bool,
    /// The cryptographic library as it names itself at run time (for example
    /// `AWS-LC FIPS 4.0.0` or `AWS-LC 5.1.0`).
    pub module: String,
    /// The FIPS module line this build corresponds to (`None` in a default build).
    pub fips_module_version: Option<u32>,
    /// The module's self-tests passed (run once per process, at start, in a FIPS build;
    /// `None` in a default build, which makes no FIPS claim).
    pub self_test: Option<bool>,
}

/// The module as it names itself (`AWS-LC FIPS 4.0.0`, `AWS-LC 5.1.0`).
pub fn module_name() -> String {
    let version = aws_lc_rs::awslc_version();
    if ENABLED {
        format!("AWS-LC FIPS {version}")
    } else {
        format!("AWS-LC {version}")
    }
}

/// The status of this build and module (runs the self-tests, a few milliseconds).
pub fn status() -> Status {
    Status {
        fips_mode: ENABLED && aws_lc_rs::try_fips_mode().is_ok(),
        module: module_name(),
        fips_module_version: if ENABLED {
            aws_lc_rs::fips_version()
        } else {
            None
        },
        self_test: ENABLED.then(|| check().is_ok()),
    }
}

/// The checks a FIPS build makes at start: the module is in FIPS mode and its
/// self-tests pass. Always `Ok` in a default build (it makes no FIPS claim).
pub fn check() -> Result<(), FipsError> {
    static CHECKED: std::sync::OnceLock<Result<(), FipsError>> = std::sync::OnceLock::new();
    if !ENABLED {
        return Ok(());
    }
    CHECKED
        .get_or_init(|| {
            aws_lc_rs::try_fips_mode().map_err(|e| FipsError::NotInFipsMode(e.to_string()))?;
            aws_lc_rs::try_fips_self_test().map_err(|_| FipsError::SelfTest)
        })
        .clone()
}

/// One line for `conduit --version` and `conduit id`.
pub fn describe(status: &Status) -> String {
    if status.fips_mode {
        format!(
            "FIPS mode: on ({}, self-tests {})",
            status.module,
            if status.self_test == Some(true) {
                "passed"
            } else {
                "FAILED"
            }
        )
    } else if ENABLED {
        format!(
            "FIPS mode: FAILED ({} does not report FIPS mode)",
            status.module
        )
    } else {
        format!(
            "FIPS mode: off (default build on {}; build with --features fips for FIPS mode)",
            status.module
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_matches_the_build() {
        let s = status();
        assert_eq!(s.fips_mode, ENABLED, "{s:?}");
        assert_eq!(s.self_test, ENABLED.then_some(true), "{s:?}");
        assert!(s.module.starts_with("AWS-LC "), "{s:?}");
        assert_eq!(s.module.contains("FIPS"), ENABLED, "{s:?}");
        assert_eq!(s.fips_module_version.is_some(), ENABLED, "{s:?}");
        assert!(check().is_ok());
        let line = describe(&s);
        assert!(line.starts_with(if ENABLED {
            "FIPS mode: on"
        } else {
            "FIPS mode: off"
        }));
    }

    #[test]
    fn the_quic_hops_use_only_approved_suites_and_groups_in_fips_mode() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        assert_eq!(provider.fips(), ENABLED);
        if ENABLED {
            let names: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
            assert!(
                !names.contains(&rustls::NamedGroup::X25519),
                "X25519 alone is not approved: {names:?}"
            );
            assert!(
                names.contains(&rustls::NamedGroup::X25519MLKEM768),
                "{names:?}"
            );
        }
    }
}
