//! The local cluster's PKI: one CA, the apiserver's serving certificate, client
//! certificates for the admin, the controller manager and the scheduler, and the
//! service-account signing key pair. All keys are ECDSA P-256 (rcgen's default), written as
//! PEM with `0600` permissions for private keys.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The apiserver serving certificate's subject alternative names.
pub const APISERVER_SANS: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    // The first address of the service range 10.96.0.0/16: the `kubernetes` Service.
    "10.96.0.1",
    // The control plane's address on the fabric (real nodes reach the apiserver there,
    // through crate::kubelet::proxy).
    "172.30.254.1",
];

/// Errors generating or writing the PKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Generating a key or signing a certificate failed.
    #[error("generating {what} failed")]
    Generate {
        /// Which key or certificate.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// Writing a PEM file failed.
    #[error("writing {path} failed")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertKey {
    /// The certificate (`CERTIFICATE` PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 `PRIVATE KEY` PEM).
    pub key_pem: String,
}

/// A client identity: the certificate's common name (the user) and organizations (groups).
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity {
    /// File stem and description (`admin`, `controller-manager`, `scheduler`).
    pub stem: &'static str,
    /// Common name: the Kubernetes user name.
    pub common_name: &'static str,
    /// Organizations: the Kubernetes groups.
    pub organizations: &'static [&'static str],
}

/// The admin: `kubernetes-admin` in `system:masters`.
pub const ADMIN: ClientIdentity = ClientIdentity {
    stem: "admin",
    common_name: "kubernetes-admin",
    organizations: &["system:masters"],
};
/// The controller manager's own identity.
pub const CONTROLLER_MANAGER: ClientIdentity = ClientIdentity {
    stem: "controller-manager",
    common_name: "system:kube-controller-manager",
    organizations: &[],
};
/// The scheduler's own identity.
pub const SCHEDULER: ClientIdentity = ClientIdentity {
    stem: "scheduler",
    common_name: "system:kube-scheduler",
    organizations: &[],
};

/// The apiserver's client identity towards the kubelets (exec, logs, port-forward); in
/// `system:masters`, so the kubelets' webhook authorization allows it everything. Issued only
/// for real nodes ([`issue`]).
pub const APISERVER_KUBELET_CLIENT: ClientIdentity = ClientIdentity {
    stem: "apiserver-kubelet-client",
    common_name: "kube-apiserver-kubelet-client",
    organizations: &["system:masters"],
};

/// Every generated credential, in memory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The cluster CA.
    pub ca: CertKey,
    /// The apiserver's serving certificate.
    pub apiserver: CertKey,
    /// Client certificates, one per [`ClientIdentity`] in [`Pki::CLIENTS`] order.
    pub clients: Vec<(ClientIdentity, CertKey)>,
    /// The service-account signing key (PKCS#8 PEM).
    pub sa_private_pem: String,
    /// Its public key (SPKI `PUBLIC KEY` PEM).
    pub sa_public_pem: String,
}

/// Where [`Pki::write`] put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// `ca.crt`.
    pub ca_cert: PathBuf,
    /// `ca.key`.
    pub ca_key: PathBuf,
    /// `apiserver.crt`.
    pub apiserver_cert: PathBuf,
    /// `apiserver.key`.
    pub apiserver_key: PathBuf,
    /// `sa.key`.
    pub sa_private: PathBuf,
    /// `sa.pub`.
    pub sa_public: PathBuf,
    /// The directory holding them all (client pairs are `<stem>.crt` / `<stem>.key`).
    pub dir: PathBuf,
}

impl PkiPaths {
    /// The paths for a PKI directory (whether or not the files exist yet).
    pub fn in_dir(dir: &Path) -> Self {
        PkiPaths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            sa_private: dir.join("sa.key"),
            sa_public: dir.join("sa.pub"),
            dir: dir.to_path_buf(),
        }
    }

    /// Certificate and key of a client identity.
    pub fn client(&self, id: &ClientIdentity) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{}.crt", id.stem)),
            self.dir.join(format!("{}.key", id.stem)),
        )
    }
}

fn generate_key(what: &'static str) -> Result<KeyPair> {
    KeyPair::generate().map_err(|source| Error::Generate { what, source })
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Pki {
    /// The client identities every cluster gets.
    pub const CLIENTS: [ClientIdentity; 3] = [ADMIN, CONTROLLER_MANAGER, SCHEDULER];

    /// Generates a fresh PKI.
    pub fn generate() -> Result<Self> {
        let ca_key = generate_key("the CA key")?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("netpol-conformance-local-ca", &[]);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|source| Error::Generate {
                what: "the CA certificate",
                source,
            })?;
        let ca = CertKey {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
        };
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = generate_key("the apiserver key")?;
        let sans: Vec<String> = APISERVER_SANS.iter().map(|s| s.to_string()).collect();
        let mut server_params = CertificateParams::new(sans).map_err(|source| Error::Generate {
            what: "the apiserver certificate parameters",
            source,
        })?;
        server_params.distinguished_name = name("kube-apiserver", &[]);
        server_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .map_err(|source| Error::Generate {
                what: "the apiserver certificate",
                source,
            })?;
        let apiserver = CertKey {
            cert_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
        };

        let mut clients = Vec::new();
        for id in Self::CLIENTS {
            let key = generate_key("a client key")?;
            let mut params = CertificateParams::default();
            params.distinguished_name = name(id.common_name, id.organizations);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.use_authority_key_identifier_extension = true;
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(|source| Error::Generate {
                    what: "a client certificate",
                    source,
                })?;
            clients.push((
                id,
                CertKey {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                },
            ));
        }

        let sa = generate_key("the service-account key")?;
        Ok(Pki {
            ca,
            apiserver,
            clients,
            sa_private_pem: sa.serialize_pem(),
            sa_public_pem: sa.public_key_pem(),
        })
    }

    /// Writes every file into `dir` (created if needed); private keys get mode 0600.
    pub fn write(&self, dir: &Path) -> Result<PkiPaths> {
        let paths = PkiPaths::in_dir(dir);
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(&paths.ca_cert, &self.ca.cert_pem, false)?;
        write_file(&paths.ca_key, &self.ca.key_pem, true)?;
        write_file(&paths.apiserver_cert, &self.apiserver.cert_pem, false)?;
        write_file(&paths.apiserver_key, &self.apiserver.key_pem, true)?;
        write_file(&paths.sa_private, &self.sa_private_pem, true)?;
        write_file(&paths.sa_public, &self.sa_public_pem, false)?;
        for (id, pair) in &self.clients {
            let (cert, key) = paths.client(id);
            write_file(&cert, &pair.cert_pem, false)?;
            write_file(&key, &pair.key_pem, true)?;
        }
        Ok(paths)
    }
}

/// A leaf certificate to issue from the cluster CA after the PKI exists (real nodes: each
/// kubelet's client and serving certificates, kube-proxy's, the apiserver's kubelet client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Common name (the Kubernetes user for a client certificate).
    pub common_name: String,
    /// Organizations (the Kubernetes groups).
    pub organizations: Vec<String>,
    /// Subject alternative names (IP addresses or DNS names); only for server certificates.
    pub sans: Vec<String>,
    /// A serving certificate (else a client certificate).
    pub server: bool,
}

impl Leaf {
    /// A client certificate for `user` in `groups`.
    pub fn client(user: &str, groups: &[&str]) -> Self {
        Leaf {
            common_name: user.into(),
            organizations: groups.iter().map(|g| g.to_string()).collect(),
            sans: Vec::new(),
            server: false,
        }
    }

    /// A serving certificate for `name` with these SANs.
    pub fn server(name: &str, sans: &[String]) -> Self {
        Leaf {
            common_name: name.into(),
            organizations: Vec::new(),
            sans: sans.to_vec(),
            server: true,
        }
    }
}

/// Issues `leaf` from the CA (`ca` holds its certificate and key PEMs).
pub fn issue(ca: &CertKey, leaf: &Leaf) -> Result<CertKey> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|source| Error::Generate {
        what: "the CA key (parsing)",
        source,
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|source| Error::Generate {
            what: "the CA certificate (parsing)",
            source,
        })?;
    let key = generate_key("a leaf key")?;
    let mut params =
        CertificateParams::new(leaf.sans.clone()).map_err(|source| Error::Generate {
            what: "leaf certificate parameters",
            source,
        })?;
    let orgs: Vec<&str> = leaf.organizations.iter().map(String::as_str).collect();
    params.distinguished_name = name(&leaf.common_name, &orgs);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if leaf.server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| Error::Generate {
            what: "a leaf certificate",
            source,
        })?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes a certificate and key as `<dir>/<stem>.crt` and `<dir>/<stem>.key` (key `0600`).
pub fn write_pair(dir: &Path, stem: &str, pair: &CertKey) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let (cert, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    write_file(&cert, &pair.cert_pem, false)?;
    write_file(&key, &pair.key_pem, true)?;
    Ok((cert, key))
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    let fail = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, contents).map_err(fail)?;
    let mode = if private { 0o600 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)
}

/// A kubeconfig for `server` that authenticates with a client certificate, referring to the
/// PEM files by path (kubectl and kube-rs both read them).
pub fn kubeconfig(server: &str, ca: &Path, cert: &Path, key: &Path, user: &str) -> String {
    // JSON is valid YAML; serde_json escapes the paths correctly.
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "npc-local", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{"name": user, "user": {
            "client-certificate": cert,
            "client-key": key,
        }}],
        "contexts": [{"name": "npc-local", "context": {"cluster": "npc-local", "user": user}}],
        "current-context": "npc-local",
        "preferences": {},
    });
    serde_json::to_string_pretty(&doc).expect("kubeconfig serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl() -> Option<&'static str> {
        Command::new("openssl")
            .arg("version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| "openssl")
    }

    /// A fresh directory per test (tests run in parallel in one process).
    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("npc-pki-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn pem_shapes_and_private_key_modes() {
        let pki = Pki::generate().unwrap();
        assert!(pki.ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(pki.sa_public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(pki.clients.len(), 3);
        let dir = temp_dir("modes");
        let paths = pki.write(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.ca_key), 0o600);
        assert_eq!(mode(&paths.sa_private), 0o600);
        assert_eq!(mode(&paths.client(&ADMIN).1), 0o600);
        assert_eq!(mode(&paths.ca_cert), 0o644);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn certificates_chain_to_the_ca_with_the_right_names() {
        let Some(openssl) = openssl() else {
            eprintln!("skipped: the openssl CLI is not installed, so the chain cannot be checked");
            return;
        };
        let dir = temp_dir("chain");
        let paths = Pki::generate().unwrap().write(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(openssl).args(args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let ca = paths.ca_cert.to_str().unwrap();
        let server = paths.apiserver_cert.to_str().unwrap();
        let verified = run(&["verify", "-CAfile", ca, "-purpose", "sslserver", server]);
        assert!(verified.contains(": OK"), "{verified}");
        let sans = run(&["x509", "-noout", "-ext", "subjectAltName", "-in", server]);
        for want in [
            "IP Address:127.0.0.1",
            "DNS:localhost",
            "DNS:kubernetes.default.svc",
            "IP Address:10.96.0.1",
        ] {
            assert!(sans.contains(want), "missing {want} in {sans}");
        }
        let (admin, _) = paths.client(&ADMIN);
        let admin = admin.to_str().unwrap();
        let verified = run(&["verify", "-CAfile", ca, "-purpose", "sslclient", admin]);
        assert!(verified.contains(": OK"), "{verified}");
        let subject = run(&["x509", "-noout", "-subject", "-in", admin]);
        assert!(subject.contains("O = system:masters"), "{subject}");
        assert!(subject.contains("CN = kubernetes-admin"), "{subject}");
        // The service-account public key is the public half of the private key.
        let derived = run(&["pkey", "-pubout", "-in", paths.sa_private.to_str().unwrap()]);
        let written = std::fs::read_to_string(&paths.sa_public).unwrap();
        assert_eq!(derived.trim(), written.trim());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn issued_leaves_chain_to_the_ca() {
        let Some(openssl) = openssl() else {
            eprintln!("skipped: the openssl CLI is not installed, so the chain cannot be checked");
            return;
        };
        let dir = temp_dir("leaf");
        let pki = Pki::generate().unwrap();
        let paths = pki.write(&dir).unwrap();
        let node = issue(&pki.ca, &Leaf::client("system:node:n0", &["system:nodes"])).unwrap();
        let serving = issue(
            &pki.ca,
            &Leaf::server("n0", &["172.30.254.10".into(), "n0".into()]),
        )
        .unwrap();
        let (node_crt, _) = write_pair(&dir, "node", &node).unwrap();
        let (serving_crt, _) = write_pair(&dir, "serving", &serving).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(openssl).args(args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let ca = paths.ca_cert.to_str().unwrap();
        let v = run(&[
            "verify",
            "-CAfile",
            ca,
            "-purpose",
            "sslclient",
            node_crt.to_str().unwrap(),
        ]);
        assert!(v.contains(": OK"), "{v}");
        let v = run(&[
            "verify",
            "-CAfile",
            ca,
            "-purpose",
            "sslserver",
            serving_crt.to_str().unwrap(),
        ]);
        assert!(v.contains(": OK"), "{v}");
        let subject = run(&[
            "x509",
            "-noout",
            "-subject",
            "-in",
            node_crt.to_str().unwrap(),
        ]);
        assert!(subject.contains("O = system:nodes"), "{subject}");
        let sans = run(&[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            serving_crt.to_str().unwrap(),
        ]);
        assert!(sans.contains("IP Address:172.30.254.10"), "{sans}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kubeconfig_names_server_and_files() {
        let kc = kubeconfig(
            "https://127.0.0.1:6443",
            Path::new("/s/ca.crt"),
            Path::new("/s/admin.crt"),
            Path::new("/s/admin.key"),
            "admin",
        );
        let v: serde_json::Value = serde_json::from_str(&kc).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(v["users"][0]["user"]["client-key"], "/s/admin.key");
        assert_eq!(v["current-context"], "npc-local");
    }
}
