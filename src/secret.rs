//! Secret material (TSIG keys, API keys, HMAC keys) read from Secret references. Values are
//! wrapped in [`Secret`], whose `Debug` never shows the bytes, so a `?secret` in a log line or
//! an error built with `{:?}` cannot leak them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::Api;

use crate::topology::SecretRef;

/// Secret bytes. Read them with [`Secret::expose`] right where they are used.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text without surrounding whitespace: keys kept in files usually end with a
    /// newline that is not part of the key.
    pub fn expose_trimmed_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok().map(str::trim)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted {} bytes>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Do not leave key material in freed memory (a plain loop may be optimized away).
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Why a secret could not be read. Names the reference, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} has no key {key:?} (keys: {keys})")]
    MissingKey { namespace: String, name: String, key: String, keys: String },
    #[error("reading Secret {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading secret file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where secret values come from: Kubernetes Secrets in the controller, a map or a directory in
/// the CLI and tests.
pub trait SecretSource: Send + Sync {
    /// The value under `reference.key`, or under `default_key` when the reference names none.
    fn get<'a>(&'a self, reference: &'a SecretRef, default_key: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>>;

    /// The values under `keys` of the Secret `reference` names (its own `key` ignored). A
    /// Kubernetes Secret is read once, so a certificate and its key rotated in place are never
    /// read half old, half new.
    fn get_keys<'a>(&'a self, reference: &'a SecretRef, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Secret>, SecretError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let one = SecretRef { key: None, ..reference.clone() };
                out.push(self.get(&one, key).await?);
            }
            Ok(out)
        })
    }
}

fn key_of<'a>(reference: &'a SecretRef, default_key: &'a str) -> &'a str {
    reference.key.as_deref().unwrap_or(default_key)
}

/// Reads Secrets through the Kubernetes API.
#[derive(Clone)]
pub struct KubeSecrets {
    client: kube::Client,
}

impl KubeSecrets {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl SecretSource for KubeSecrets {
    fn get<'a>(&'a self, reference: &'a SecretRef, default_key: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>> {
        Box::pin(async move {
            let key = [key_of(reference, default_key)];
            let mut values = self.get_keys(&SecretRef { key: None, ..reference.clone() }, &key).await?;
            values.pop().ok_or_else(|| SecretError::MissingKey {
                namespace: reference.namespace.clone(),
                name: reference.name.clone(),
                key: key[0].to_string(),
                keys: String::new(),
            })
        })
    }

    fn get_keys<'a>(&'a self, reference: &'a SecretRef, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Secret>, SecretError>> {
        Box::pin(async move {
            let (namespace, name) = (reference.namespace.clone(), reference.name.clone());
            let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), &reference.namespace);
            let secret = match api.get_opt(&reference.name).await {
                Ok(Some(s)) => s,
                Ok(None) => return Err(SecretError::NotFound { namespace, name }),
                Err(source) => return Err(SecretError::Kube { namespace, name, source }),
            };
            let data = secret.data.unwrap_or_default();
            // `stringData` is write-only, but objects built by hand (tests, dry runs) may carry it.
            let string_data = secret.string_data.unwrap_or_default();
            keys.iter()
                .map(|key| match (data.get(*key), string_data.get(*key)) {
                    (Some(v), _) => Ok(Secret(v.0.clone())),
                    (None, Some(v)) => Ok(Secret(v.clone().into_bytes())),
                    (None, None) => {
                        let keys: Vec<&str> = data.keys().chain(string_data.keys()).map(String::as_str).collect();
                        Err(SecretError::MissingKey { namespace: namespace.clone(), name: name.clone(), key: key.to_string(), keys: keys.join(", ") })
                    }
                })
                .collect()
        })
    }
}

/// Secrets held in memory, optionally backed by a directory laid out like mounted Secrets:
/// `<dir>/<namespace>/<name>/<key>`.
#[derive(Default, Clone)]
pub struct LocalSecrets {
    values: BTreeMap<(String, String, String), Secret>,
    dir: Option<PathBuf>,
}

impl LocalSecrets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks up values not inserted in memory under `dir/<namespace>/<name>/<key>`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Self {
        Self { values: BTreeMap::new(), dir: Some(dir.as_ref().to_path_buf()) }
    }

    pub fn insert(&mut self, namespace: &str, name: &str, key: &str, value: impl Into<Vec<u8>>) -> &mut Self {
        self.values.insert((namespace.into(), name.into(), key.into()), Secret::new(value));
        self
    }

    fn lookup(&self, reference: &SecretRef, key: &str) -> Result<Secret, SecretError> {
        let id = (reference.namespace.clone(), reference.name.clone(), key.to_string());
        if let Some(v) = self.values.get(&id) {
            return Ok(v.clone());
        }
        let (namespace, name) = (reference.namespace.clone(), reference.name.clone());
        let Some(dir) = &self.dir else {
            let keys: Vec<&str> = self.values.keys().filter(|(ns, n, _)| *ns == namespace && *n == name).map(|(_, _, k)| k.as_str()).collect();
            return Err(if keys.is_empty() {
                SecretError::NotFound { namespace, name }
            } else {
                SecretError::MissingKey { namespace, name, key: key.to_string(), keys: keys.join(", ") }
            });
        };
        let secret_dir = dir.join(&namespace).join(&name);
        if !secret_dir.is_dir() {
            return Err(SecretError::NotFound { namespace, name });
        }
        let path = secret_dir.join(key);
        match std::fs::read(&path) {
            Ok(v) => Ok(Secret(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut keys: Vec<String> = std::fs::read_dir(&secret_dir)
                    .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                keys.sort();
                Err(SecretError::MissingKey { namespace, name, key: key.to_string(), keys: keys.join(", ") })
            }
            Err(source) => Err(SecretError::File { path, source }),
        }
    }
}

impl SecretSource for LocalSecrets {
    fn get<'a>(&'a self, reference: &'a SecretRef, default_key: &'a str) -> BoxFuture<'a, Result<Secret, SecretError>> {
        Box::pin(async move { self.lookup(reference, key_of(reference, default_key)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ns: &str, name: &str, key: Option<&str>) -> SecretRef {
        SecretRef { namespace: ns.into(), name: name.into(), key: key.map(str::to_string) }
    }

    #[test]
    fn debug_redacts_the_value() {
        let s = Secret::new("hunter2-very-secret");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "Secret(<redacted 19 bytes>)");
    }

    #[tokio::test]
    async fn local_secrets_use_the_default_key_and_name_missing_ones() {
        let mut m = LocalSecrets::new();
        m.insert("dns", "tsig", "secret", "c2VjcmV0");
        let got = m.get(&r("dns", "tsig", None), "secret").await.expect("default key");
        assert_eq!(got.expose(), b"c2VjcmV0");
        let err = m.get(&r("dns", "tsig", Some("other")), "secret").await.expect_err("missing key");
        assert_eq!(err.to_string(), "Secret dns/tsig has no key \"other\" (keys: secret)");
        assert!(!err.to_string().contains("c2VjcmV0"));
        let err = m.get(&r("dns", "nope", None), "secret").await.expect_err("missing secret");
        assert_eq!(err.to_string(), "Secret dns/nope not found");
    }

    #[tokio::test]
    async fn local_secrets_read_a_mounted_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("dns/pdns")).expect("mkdir");
        std::fs::write(dir.path().join("dns/pdns/apiKey"), "key\n").expect("write");
        let m = LocalSecrets::from_dir(dir.path());
        let got = m.get(&r("dns", "pdns", None), "apiKey").await.expect("file");
        assert_eq!(got.expose_trimmed_str(), Some("key"));
        let err = m.get(&r("dns", "pdns", Some("token")), "apiKey").await.expect_err("missing key");
        assert_eq!(err.to_string(), "Secret dns/pdns has no key \"token\" (keys: apiKey)");
    }
}
