//! The cluster secret (`cluster.secret_file`) and the HMAC-SHA256 tags it puts on what hubs
//! exchange through Redis (DESIGN 8, Trust).
//!
//! Every stored peer state, every mesh message, every inbox message and the stored hub
//! objects carry a tag made by the first secret of the file; a tag made by any secret of
//! the file is accepted, so a secret is rotated by adding the new one second on every hub,
//! then moving it first, then removing the old one (each step a SIGHUP or restart of every
//! hub). Anything whose tag does not verify is dropped by the receiver (`driver`), so a
//! client that can write to Redis but does not hold the secret cannot make a hub show a
//! peer anything.
//!
//! What a tag covers is a list of parts, each length-prefixed after a domain label, so no
//! two kinds of thing (a state, a departure, an inbox message) and no two splits of the
//! same bytes share a tag. Objects are covered in their canonical JSON (`serde_json` of the
//! decoded list), so a receiver verifies what it decoded, not bytes it no longer has.
//!
//! Not covered: a tag proves a hub wrote the thing once, not that it is current. A client
//! that can publish (the ACL of `deploy/redis/` lets only the hubs' users do so) could
//! replay a message it saw earlier. The control state (routes, leases, owned peers, the
//! block list) is not tagged either: a forger there can disconnect peers or hide them, but
//! not make a hub deliver anything to a peer.
//!
//! Without a secret file (allowed only for a Redis on this machine; `config`), tags are
//! empty and nothing is checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::protocol::wire::Object;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Fewest bytes in a secret: a 256-bit key (`openssl rand -hex 32` writes 64).
pub const MIN_SECRET_BYTES: usize = 32;
/// Most secrets in the file: the one that signs, and the one a rotation still accepts.
pub const MAX_SECRETS: usize = 2;

/// Why a secret file is refused. The secrets themselves never appear in these messages.
#[derive(Debug, Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cluster.secret_file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// Others than its owner may read it.
    #[error(
        "cluster.secret_file {}: readable by group or others (mode {mode:o}); chmod 600 it",
        path.display()
    )]
    Readable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not one or two secrets of at least [`MIN_SECRET_BYTES`] bytes.
    #[error("cluster.secret_file {}: {reason}", path.display())]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The secrets of the file: the first signs, each verifies.
#[derive(Clone)]
pub struct ClusterSecrets {
    keys: Vec<HmacSha256>,
}

impl std::fmt::Debug for ClusterSecrets {
    /// Never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecrets({} secrets)", self.keys.len())
    }
}

/// What a tag is about: its domain label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tagged {
    /// A peer's relayed state in a mesh (stored, published, snapshot).
    State,
    /// A peer's departure from a mesh (stored with its state, published on removal).
    Gone,
    /// A message on a hub's inbox channel.
    Inbox,
    /// The cluster-wide hub objects at a version.
    HubObjects,
}

impl Tagged {
    fn label(self) -> &'static [u8] {
        match self {
            Self::State => b"p2ppi-cluster state v1",
            Self::Gone => b"p2ppi-cluster gone v1",
            Self::Inbox => b"p2ppi-cluster inbox v1",
            Self::HubObjects => b"p2ppi-cluster hub-objects v1",
        }
    }
}

impl ClusterSecrets {
    /// Secrets given directly (tests; the first signs).
    ///
    /// # Errors
    /// [`SecretError::Content`] unless there are one or two secrets of at least
    /// [`MIN_SECRET_BYTES`] bytes.
    pub fn from_secrets(secrets: &[&[u8]]) -> Result<Self, SecretError> {
        let content = |reason: String| SecretError::Content {
            path: PathBuf::from("(given)"),
            reason,
        };
        if secrets.is_empty() || secrets.len() > MAX_SECRETS {
            return Err(content(format!(
                "{} secrets; one (or two during a rotation) are expected",
                secrets.len()
            )));
        }
        if let Some(i) = secrets.iter().position(|s| s.len() < MIN_SECRET_BYTES) {
            return Err(content(format!(
                "secret {} is shorter than {MIN_SECRET_BYTES} bytes",
                i + 1
            )));
        }
        let keys = secrets
            .iter()
            .map(|s| HmacSha256::new_from_slice(s).expect("HMAC takes a key of any length"))
            .collect();
        Ok(Self { keys })
    }

    /// Reads a secret file: one secret per line (blank lines and lines starting with `#`
    /// skipped, surrounding spaces trimmed), the first signing; readable by its owner only.
    ///
    /// # Errors
    /// [`SecretError`] naming the file and what is wrong (never a secret).
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let read = |source| SecretError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecretError::Readable {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read(path).map_err(read)?;
        let lines: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
            .collect();
        Self::from_secrets(&lines).map_err(|e| match e {
            SecretError::Content { reason, .. } => SecretError::Content {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    fn mac(key: &HmacSha256, what: Tagged, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(what.label());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The tag of `parts` under the signing secret (lower-case hex).
    pub fn tag(&self, what: Tagged, parts: &[&[u8]]) -> String {
        let mac = Self::mac(&self.keys[0], what, parts);
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
    }

    /// Whether `tag` is the tag of `parts` under any of the secrets (compared in constant
    /// time).
    pub fn verify(&self, what: Tagged, parts: &[&[u8]], tag: &str) -> bool {
        let Ok(tag) = data_encoding::HEXLOWER.decode(tag.as_bytes()) else {
            return false;
        };
        self.keys
            .iter()
            .any(|key| Self::mac(key, what, parts).verify_slice(&tag).is_ok())
    }

    /// The tag of a peer's state: `objects_json` as [`objects_json`] writes it.
    pub fn state_tag(&self, peer: &str, mesh: &str, objects_json: &str) -> String {
        self.tag(
            Tagged::State,
            &[peer.as_bytes(), mesh.as_bytes(), objects_json.as_bytes()],
        )
    }

    /// The tag of a peer's departure from a mesh.
    pub fn gone_tag(&self, peer: &str, mesh: &str) -> String {
        self.tag(Tagged::Gone, &[peer.as_bytes(), mesh.as_bytes()])
    }
}

/// The canonical JSON of a list of objects: what a state tag covers.
pub fn objects_json(objects: &[Object]) -> String {
    serde_json::to_string(objects).expect("objects are plain strings")
}

/// The secrets a store signs and verifies with, replaceable while it runs (a SIGHUP reads
/// the file again). Empty: nothing is signed or checked.
#[derive(Default)]
pub(crate) struct Seal {
    secrets: ArcSwapOption<ClusterSecrets>,
    file: Option<PathBuf>,
}

impl Seal {
    /// A seal with `secrets` read from `file`.
    pub(crate) fn new(secrets: Option<ClusterSecrets>, file: Option<PathBuf>) -> Self {
        Self {
            secrets: ArcSwapOption::new(secrets.map(Arc::new)),
            file,
        }
    }

    /// The secrets in force, if any.
    pub(crate) fn secrets(&self) -> Option<Arc<ClusterSecrets>> {
        self.secrets.load_full()
    }

    /// Reads the secret file again; whether the signing secret changed. Without a file
    /// nothing happens.
    ///
    /// # Errors
    /// [`SecretError`] when the file is refused: the secrets in force stay.
    pub(crate) fn reload(&self) -> Result<bool, SecretError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let new = ClusterSecrets::load(file)?;
        let probe: &[&[u8]] = &[b"probe"];
        let old = self.secrets.swap(Some(Arc::new(new.clone())));
        Ok(old.is_none_or(|old| old.tag(Tagged::State, probe) != new.tag(Tagged::State, probe)))
    }

    /// A state tag, or empty without secrets.
    pub(crate) fn state_tag(&self, peer: &str, mesh: &str, objects_json: &str) -> String {
        self.secrets()
            .map(|s| s.state_tag(peer, mesh, objects_json))
            .unwrap_or_default()
    }

    /// A departure tag, or empty without secrets.
    pub(crate) fn gone_tag(&self, peer: &str, mesh: &str) -> String {
        self.secrets()
            .map(|s| s.gone_tag(peer, mesh))
            .unwrap_or_default()
    }

    /// A tag of anything else, or empty without secrets.
    pub(crate) fn tag(&self, what: Tagged, parts: &[&[u8]]) -> String {
        self.secrets()
            .map(|s| s.tag(what, parts))
            .unwrap_or_default()
    }

    /// Whether `tag` verifies (always, without secrets).
    pub(crate) fn verify(&self, what: Tagged, parts: &[&[u8]], tag: Option<&str>) -> bool {
        match self.secrets() {
            None => true,
            Some(s) => tag.is_some_and(|tag| s.verify(what, parts, tag)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"0123456789abcdef0123456789abcdef-a";
    const B: &[u8] = b"0123456789abcdef0123456789abcdef-b";

    #[test]
    fn a_tag_verifies_under_any_secret_of_the_file_and_nothing_else() {
        let old = ClusterSecrets::from_secrets(&[A]).unwrap();
        let rotating = ClusterSecrets::from_secrets(&[B, A]).unwrap();
        let new = ClusterSecrets::from_secrets(&[B]).unwrap();
        let by_old = old.state_tag("p", "m", "[]");
        let by_new = rotating.state_tag("p", "m", "[]");
        assert_eq!(
            by_new,
            new.state_tag("p", "m", "[]"),
            "the first secret signs"
        );
        assert!(rotating.verify(Tagged::State, &[b"p", b"m", b"[]"], &by_old));
        assert!(rotating.verify(Tagged::State, &[b"p", b"m", b"[]"], &by_new));
        assert!(!new.verify(Tagged::State, &[b"p", b"m", b"[]"], &by_old));
        // Another kind, another split of the same bytes, another value: refused.
        assert!(!old.verify(Tagged::Gone, &[b"p", b"m", b"[]"], &by_old));
        assert!(!old.verify(Tagged::State, &[b"pm", b"", b"[]"], &by_old));
        assert!(!old.verify(Tagged::State, &[b"p", b"m", b"[1]"], &by_old));
        assert!(!old.verify(Tagged::State, &[b"p", b"m", b"[]"], "zz"));
        assert!(!old.verify(Tagged::State, &[b"p", b"m", b"[]"], ""));
    }

    #[test]
    fn short_missing_or_too_many_secrets_are_refused() {
        assert!(ClusterSecrets::from_secrets(&[]).is_err());
        assert!(ClusterSecrets::from_secrets(&[b"short"]).is_err());
        assert!(ClusterSecrets::from_secrets(&[A, B, A]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_read_line_by_line_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, b"# rotation\n\n  0123456789abcdef0123456789abcdef-b  \n0123456789abcdef0123456789abcdef-a\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClusterSecrets::load(&file).unwrap_err().to_string();
        assert!(err.contains("readable by group or others"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = ClusterSecrets::load(&file).unwrap();
        let b = ClusterSecrets::from_secrets(&[B]).unwrap();
        assert_eq!(s.gone_tag("p", "m"), b.gone_tag("p", "m"));
        std::fs::write(&file, b"too short\n").unwrap();
        let err = ClusterSecrets::load(&file).unwrap_err().to_string();
        assert!(
            err.contains("shorter than 32") && !err.contains("too short"),
            "{err}"
        );
    }
}
