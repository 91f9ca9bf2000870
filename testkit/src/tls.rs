//! A throwaway certificate authority and server certificate for TLS test servers,
//! made with the `openssl` command-line tool.
//!
//! The CA is a self-signed P-256 certificate (`CA:TRUE`, `keyCertSign`); the
//! server certificate is signed by it, valid for `IP:127.0.0.1` and
//! `DNS:localhost` (`CA:FALSE`, `serverAuth`), as strict verifiers such as
//! rustls/webpki require. Both live two days; the keys are unencrypted.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable naming the `openssl` executable to use instead of `$PATH`.
pub const OPENSSL_ENV: &str = "ASIDE_OPENSSL";

/// The CA certificate, PEM.
pub(crate) const CA_CERT: &str = "tls-ca.crt";
/// The server certificate, PEM.
pub(crate) const SERVER_CERT: &str = "tls-server.crt";
/// The server's private key, PEM.
pub(crate) const SERVER_KEY: &str = "tls-server.key";

const CA_KEY: &str = "tls-ca.key";
const SERVER_CSR: &str = "tls-server.csr";
const CA_CONFIG: &str = "tls-ca.cnf";
const SERVER_CONFIG: &str = "tls-server.cnf";

const CA_CONFIG_TEXT: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = aside-testkit CA
O = aside-testkit
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
";

const SERVER_CONFIG_TEXT: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = 127.0.0.1
O = aside-testkit
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Writes a fresh CA and a server certificate signed by it into `dir`.
///
/// # Panics
///
/// When `openssl` is missing or fails (its output is quoted).
pub(crate) fn generate(dir: &Path) {
    fs::write(dir.join(CA_CONFIG), CA_CONFIG_TEXT).expect("write the CA's openssl config");
    fs::write(dir.join(SERVER_CONFIG), SERVER_CONFIG_TEXT).expect("write the server's openssl config");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", CA_KEY, "-out", CA_CERT, "-days", "2"],
            &["-config", CA_CONFIG, "-extensions", "v3_ca"],
        ],
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &["-keyout", SERVER_KEY, "-out", SERVER_CSR, "-config", SERVER_CONFIG],
        ],
    );
    let serial = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1)
        .to_string();
    openssl(
        dir,
        &[&[
            "x509",
            "-req",
            "-in",
            SERVER_CSR,
            "-CA",
            CA_CERT,
            "-CAkey",
            CA_KEY,
            "-set_serial",
            &serial,
            "-out",
            SERVER_CERT,
            "-days",
            "2",
            "-extfile",
            SERVER_CONFIG,
            "-extensions",
            "v3_server",
        ]],
    );
}

/// The `openssl` executable: `$ASIDE_OPENSSL`, else `openssl` on `$PATH`.
///
/// # Panics
///
/// When neither exists, with a message saying how to install it.
pub fn openssl_binary() -> PathBuf {
    if let Some(explicit) = env::var_os(OPENSSL_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(explicit);
    }
    env::var_os("PATH")
        .and_then(|path| {
            env::split_paths(&path)
                .map(|dir| dir.join("openssl"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "openssl not found on PATH; the TLS test servers need it to make their certificates. \
                 Install it: `sudo apt-get install -y openssl`, or set {OPENSSL_ENV} to its path."
            )
        })
}

fn openssl(dir: &Path, args: &[&[&str]]) {
    let args: Vec<&str> = args.iter().flat_map(|part| part.iter().copied()).collect();
    let output = Command::new(openssl_binary())
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot execute openssl: {err}"));
    if !output.status.success() {
        panic!(
            "openssl {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
