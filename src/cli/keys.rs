//! `conduit keygen` and `conduit id`.

use clap::Args;
use serde_json::json;

use crate::crypto::identity::Identity;
use crate::home::Home;

/// Options of `keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Replace an existing identity (the old key is lost; peers that pinned it must
    /// re-enroll the new one).
    #[arg(long)]
    force: bool,
    /// Print the new public key and fingerprint as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `id`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Print `{"public_key": ..., "fingerprint": ...}`.
    #[arg(long)]
    json: bool,
}

pub(crate) fn keygen(home: &Home, args: KeygenArgs) -> anyhow::Result<()> {
    let audit = crate::audit::dir(home);
    if args.force && !crate::audit::log::list(&audit)?.is_empty() {
        // The chain is keyed by this identity: a new key could neither extend nor verify it.
        anyhow::bail!(
            "{} holds an audit log chained under the current identity; move it aside (and keep \
             the current key to verify it) before replacing the identity",
            audit.display()
        );
    }
    let id = Identity::generate()?;
    id.save(home, args.force)?;
    print_id(&id, args.json, "created a new identity", false, None);
    Ok(())
}

pub(crate) fn id(home: &Home, args: IdArgs) -> anyhow::Result<()> {
    let id = Identity::load(home)?;
    // A FIPS build's P-256 identity, made on first use: its pin is what peers add with
    // `conduit peers add --fips` (docs/FIPS.md).
    let pin = if crate::crypto::fips::ENABLED {
        Some(crate::crypto::fips_identity::FipsIdentity::load_or_create(home)?.pin())
    } else {
        None
    };
    print_id(&id, args.json, "this endpoint", true, pin);
    Ok(())
}

/// Prints the identity; `with_fips`: also whether the binary is in FIPS mode, and its
/// module (`conduit id`).
fn print_id(
    id: &Identity,
    json: bool,
    what: &str,
    with_fips: bool,
    pin: Option<crate::crypto::fips_identity::FipsPin>,
) {
    let key = id.public();
    let fips = with_fips.then(crate::crypto::fips::status);
    if json {
        let mut v = json!({
            "public_key": key.to_string(),
            "fingerprint": key.fingerprint().to_string(),
        });
        if let Some(f) = &fips {
            v["fips"] = json!(f);
        }
        if let Some(p) = pin {
            v["fips_pin"] = json!(p.to_string());
        }
        println!("{v}");
    } else {
        println!("{what}");
        println!("public key:  {key}");
        println!("fingerprint: {}", key.fingerprint());
        if let Some(p) = pin {
            println!("fips pin:    {p}");
        }
        if let Some(f) = &fips {
            println!("{}", crate::crypto::fips::describe(f));
        }
    }
}
