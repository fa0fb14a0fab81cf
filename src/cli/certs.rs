//! `conduit certs ca` and `conduit certs relay`: a development CA and relay certificates
//! signed by it (rcgen). For development and tests; production relays use the
//! organisation's PKI or an ACME certificate (certs/README.md).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The certificate commands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a development CA: DIR/ca.pem and DIR/ca.key (0600).
    Ca(CaArgs),
    /// Make a relay certificate signed by the development CA: DIR/relay.pem (the chain)
    /// and DIR/relay.key (0600), and print its --relay-pin.
    Relay(RelayCertArgs),
}

/// Options of `certs ca`.
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Directory to write into (created 0700 if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

/// Options of `certs relay`.
#[derive(Debug, Args)]
pub struct RelayCertArgs {
    /// Directory of the development CA (ca.pem, ca.key).
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// A DNS name or IP address the relay is reached at (repeatable).
    #[arg(long = "name", value_name = "NAME", required = true)]
    names: Vec<String>,
    /// Directory to write into (created 0700 if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

/// The CA's subject: fixed, so the CA certificate can be rebuilt from its key to sign.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "phi-conduit development CA");
    dn.push(DnType::OrganizationName, "phi-conduit (development only)");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        anyhow::bail!("{} exists (use --force to replace it)", path.display());
    }
    crate::fsutil::write_atomic(path, bytes, mode)
        .with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Ca(a) => ca(&a),
        CertsCommand::Relay(a) => relay(&a),
    }
}

fn ca(a: &CaArgs) -> anyhow::Result<()> {
    crate::fsutil::private_dir(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_new(
        &a.out.join("ca.key"),
        key.serialize_pem().as_bytes(),
        0o600,
        a.force,
    )?;
    write_new(&a.out.join("ca.pem"), cert.pem().as_bytes(), 0o644, a.force)?;
    println!(
        "development CA written to {}/ca.pem (key ca.key, mode 0600)",
        a.out.display()
    );
    println!(
        "clients trust it with --relay-ca {}/ca.pem",
        a.out.display()
    );
    Ok(())
}

fn relay(a: &RelayCertArgs) -> anyhow::Result<()> {
    let ca_key_path = a.ca.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path)
        .with_context(|| format!("reading {}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("the CA key is not a PEM private key")?;
    let ca_pem_path = a.ca.join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_pem_path)
        .with_context(|| format!("reading {}", ca_pem_path.display()))?;
    // The same subject and key sign as the CA certificate on disk does.
    let ca_cert = ca_params()?.self_signed(&ca_key)?;
    let mut p = CertificateParams::new(a.names.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, a.names[0].clone());
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
    crate::fsutil::private_dir(&a.out).with_context(|| format!("{}", a.out.display()))?;
    write_new(
        &a.out.join("relay.key"),
        key.serialize_pem().as_bytes(),
        0o600,
        a.force,
    )?;
    let chain = format!("{}{}", cert.pem(), ca_pem);
    write_new(&a.out.join("relay.pem"), chain.as_bytes(), 0o644, a.force)?;
    let pin: String = {
        use sha2::Digest;
        sha2::Sha256::digest(cert.der())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    println!(
        "relay certificate for {} written to {}/relay.pem (key relay.key, mode 0600)",
        a.names.join(", "),
        a.out.display()
    );
    println!("pin: {pin}");
    Ok(())
}
