//! The operator's block list (DESIGN 10): PeerNames refused whatever CA signed them, with an
//! optional reason. Plain data and its file; the hub enforces it (`hub::identities`): inside
//! the TLS handshake through [`crate::tls::PeerFilter`], and by closing live sessions.
//!
//! # Where it lives
//! - A hub alone: `<data-dir>/blocked.json` is the list. Every change is written there
//!   (atomically, as `objects.json`: [`crate::persist::write_atomically`]) before it is
//!   acknowledged, so a block survives a restart.
//! - A hub of a cluster (DESIGN 8): Redis holds the cluster's list, which every hub applies.
//!   Each hub still writes the list in force to its `blocked.json`, as a copy: a cluster
//!   whose Redis never had a list (a new cluster, or one that lost its state) is seeded from
//!   it, as hub objects are.
//!
//! # Bounds and input
//! At most `blocklist.max_entries` PeerNames (a new one beyond is refused and counted);
//! a reason of at most `blocklist.max_reason_bytes` bytes without control characters (it is
//! logged and shown on the admin API). What comes from Redis or the file is checked the same
//! way; an entry whose reason is unacceptable keeps its block and loses its reason (refusing
//! the entry would unblock a peer). Redis is read within the same bounds (at most
//! `max_entries` entries of at most [`BlockLimits::max_entry_bytes`] each, cut in Redis
//! before the reply), so what another Redis client writes there cannot take a hub's memory
//! or its Redis connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::persist::{write_atomically, PersistError};
use crate::tls::{PeerFilter, PeerName};

/// The file name in the data directory.
pub const FILE_NAME: &str = "blocked.json";
/// Default most PeerNames on the list (`blocklist.max_entries`).
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// Default longest reason, bytes (`blocklist.max_reason_bytes`).
pub const DEFAULT_MAX_REASON_BYTES: usize = 256;
/// Longest `since` accepted from a file or Redis (an RFC 3339 time is 20 bytes).
const MAX_SINCE_BYTES: usize = 40;

/// Why a block could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BlockError {
    /// The reason is too long.
    #[error("the reason is {len} bytes, more than blocklist.max_reason_bytes ({max})")]
    ReasonTooLong {
        /// The limit.
        max: usize,
        /// Its length.
        len: usize,
    },
    /// The reason holds control characters (line breaks would forge log lines).
    #[error("the reason holds control characters")]
    ReasonControl,
    /// The list holds `blocklist.max_entries` PeerNames already.
    #[error("the block list is full: {max} PeerNames (blocklist.max_entries)")]
    Full {
        /// The limit.
        max: usize,
    },
    /// The change could not be made durable (nothing changed).
    #[error("not saved: {0}")]
    Persist(String),
    /// The cluster's Redis did not take the change (nothing changed).
    #[error("the cluster's Redis: {0}")]
    Cluster(String),
    /// Fewer replicas acknowledged the change than `cluster.min_replicas` asks: it is in
    /// force, but a failover may take it back, so it is not acknowledged.
    #[error("{0}")]
    Unreplicated(String),
}

/// One entry: why and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// The operator's reason, if given.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it was blocked (RFC 3339), if known.
    #[serde(default)]
    pub since: Option<String>,
}

impl BlockEntry {
    /// An entry made now.
    pub fn now(reason: Option<String>) -> Self {
        Self {
            reason,
            since: Some(
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            ),
        }
    }
}

/// A blocked peer as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockedPeer {
    /// Its PeerName.
    pub peer_name: PeerName,
    /// Why and since when.
    #[serde(flatten)]
    pub entry: BlockEntry,
}

/// The list's bounds (`[blocklist]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLimits {
    /// Most PeerNames.
    pub max_entries: usize,
    /// Longest reason, bytes.
    pub max_reason_bytes: usize,
}

impl Default for BlockLimits {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_reason_bytes: DEFAULT_MAX_REASON_BYTES,
        }
    }
}

impl BlockLimits {
    /// Checks a reason given on the admin API.
    ///
    /// # Errors
    /// [`BlockError::ReasonTooLong`] or [`BlockError::ReasonControl`].
    pub fn check_reason(&self, reason: &str) -> Result<(), BlockError> {
        if reason.len() > self.max_reason_bytes {
            return Err(BlockError::ReasonTooLong {
                max: self.max_reason_bytes,
                len: reason.len(),
            });
        }
        if reason.chars().any(char::is_control) {
            return Err(BlockError::ReasonControl);
        }
        Ok(())
    }

    /// The longest entry (its JSON) the list can hold: a reason of `max_reason_bytes`
    /// escaped at worst (6 bytes a byte), `since` and the rest. A longer one in Redis was not
    /// written by a hub, and is read without its reason.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_reason_bytes
            .saturating_mul(6)
            .saturating_add(MAX_SINCE_BYTES + 64)
    }

    /// An entry read from a file or Redis, with what is unacceptable in it dropped (never
    /// the block itself).
    pub fn sanitized(&self, entry: BlockEntry) -> BlockEntry {
        BlockEntry {
            reason: entry
                .reason
                .filter(|r| self.check_reason(r).is_ok() && !r.is_empty()),
            since: entry
                .since
                .filter(|s| s.len() <= MAX_SINCE_BYTES && humantime::parse_rfc3339_weak(s).is_ok()),
        }
    }
}

/// What [`BlockList::replace`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDiff {
    /// Blocked now, not before.
    pub added: Vec<PeerName>,
    /// Blocked before, not now.
    pub removed: Vec<PeerName>,
}

/// The block list in force. Read on every handshake (a read lock and a tree lookup).
#[derive(Debug)]
pub struct BlockList {
    entries: RwLock<BTreeMap<PeerName, BlockEntry>>,
    limits: BlockLimits,
}

impl BlockList {
    /// An empty list with `limits`.
    pub fn new(limits: BlockLimits) -> Self {
        Self {
            entries: RwLock::new(BTreeMap::new()),
            limits,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<PeerName, BlockEntry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<PeerName, BlockEntry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The bounds.
    pub fn limits(&self) -> BlockLimits {
        self.limits
    }

    /// Whether `peer` is blocked.
    pub fn contains(&self, peer: &PeerName) -> bool {
        self.read().contains_key(peer)
    }

    /// How many PeerNames are blocked.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether nobody is blocked.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every entry, by PeerName.
    pub fn list(&self) -> Vec<BlockedPeer> {
        self.read()
            .iter()
            .map(|(peer_name, entry)| BlockedPeer {
                peer_name: peer_name.clone(),
                entry: entry.clone(),
            })
            .collect()
    }

    /// Blocks `peer` (replacing the entry of a peer blocked already). Returns whether it
    /// was not blocked before.
    ///
    /// # Errors
    /// [`BlockError::Full`] for a new PeerName on a full list.
    pub fn insert(&self, peer: PeerName, entry: BlockEntry) -> Result<bool, BlockError> {
        let mut entries = self.write();
        if !entries.contains_key(&peer) && entries.len() >= self.limits.max_entries {
            return Err(BlockError::Full {
                max: self.limits.max_entries,
            });
        }
        Ok(entries.insert(peer, entry).is_none())
    }

    /// Whether `peer` can be added (blocked already, or room left).
    ///
    /// # Errors
    /// [`BlockError::Full`].
    pub fn check_room(&self, peer: &PeerName) -> Result<(), BlockError> {
        let entries = self.read();
        if entries.contains_key(peer) || entries.len() < self.limits.max_entries {
            Ok(())
        } else {
            Err(BlockError::Full {
                max: self.limits.max_entries,
            })
        }
    }

    /// Lifts a block; whether there was one.
    pub fn remove(&self, peer: &PeerName) -> bool {
        self.write().remove(peer).is_some()
    }

    /// Replaces the whole list (the cluster's, or the file's at start). Entries beyond
    /// `max_entries` are left out (the caller is told how many by `dropped`).
    pub fn replace(&self, entries: Vec<(PeerName, BlockEntry)>) -> (BlockDiff, usize) {
        let mut next: BTreeMap<PeerName, BlockEntry> = BTreeMap::new();
        let mut dropped = 0;
        for (peer, entry) in entries {
            if next.len() >= self.limits.max_entries && !next.contains_key(&peer) {
                dropped += 1;
                continue;
            }
            next.insert(peer, self.limits.sanitized(entry));
        }
        let mut current = self.write();
        let diff = BlockDiff {
            added: next
                .keys()
                .filter(|p| !current.contains_key(*p))
                .cloned()
                .collect(),
            removed: current
                .keys()
                .filter(|p| !next.contains_key(*p))
                .cloned()
                .collect(),
        };
        *current = next;
        (diff, dropped)
    }

    /// The entries, by PeerName (to persist or seed).
    pub fn entries(&self) -> Vec<(PeerName, BlockEntry)> {
        self.read()
            .iter()
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect()
    }
}

impl PeerFilter for BlockList {
    fn refuses(&self, peer: &PeerName) -> bool {
        self.contains(peer)
    }
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    blocked: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    peer_name: String,
    #[serde(flatten)]
    entry: BlockEntry,
}

/// `<data-dir>/blocked.json`.
#[derive(Debug, Clone)]
pub struct BlockStore {
    path: PathBuf,
}

impl BlockStore {
    /// The file of `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(FILE_NAME),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entries saved, or `None` when nothing was ever saved.
    ///
    /// # Errors
    /// [`PersistError`] when the file cannot be read, is not ours, or names something that is
    /// not a PeerName (naming it).
    pub fn load(&self) -> Result<Option<Vec<(PeerName, BlockEntry)>>, PersistError> {
        let path = &self.path;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PersistError::Io {
                    path: path.clone(),
                    source,
                })
            }
        };
        let corrupt = |reason: String| PersistError::Corrupt {
            path: path.clone(),
            reason,
        };
        let file: FileFormat = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.version != 1 {
            return Err(corrupt(format!("unknown version {}", file.version)));
        }
        file.blocked
            .into_iter()
            .map(|e| match PeerName::parse(&e.peer_name) {
                Some(peer) => Ok((peer, e.entry)),
                None => Err(corrupt(format!("{:?} is not a PeerName", e.peer_name))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Writes `entries` durably.
    ///
    /// # Errors
    /// [`PersistError::Io`]; the previous file is then intact.
    pub fn save(&self, entries: &[(PeerName, BlockEntry)]) -> Result<(), PersistError> {
        let file = FileFormat {
            version: 1,
            blocked: entries
                .iter()
                .map(|(peer, entry)| FileEntry {
                    peer_name: peer.as_str().to_owned(),
                    entry: entry.clone(),
                })
                .collect(),
        };
        let body = serde_json::to_vec_pretty(&file).expect("entries serialize");
        write_atomically(&self.path, &body)
    }
}

/// Decodes the cluster's list as Redis holds it (PeerName → entry JSON). Entries whose key
/// is not a PeerName are left out (counted by the caller as `bad`); an entry whose JSON does
/// not decode keeps its block without a reason.
pub fn decode_entries(raw: Vec<(String, String)>) -> (Vec<(PeerName, BlockEntry)>, usize) {
    let mut bad = 0;
    let mut entries = Vec::with_capacity(raw.len());
    for (peer, json) in raw {
        let Some(peer) = PeerName::parse(&peer) else {
            bad += 1;
            continue;
        };
        let entry = serde_json::from_str(&json).unwrap_or_else(|_| {
            bad += 1;
            BlockEntry {
                reason: None,
                since: None,
            }
        });
        entries.push((peer, entry));
    }
    (entries, bad)
}

/// An entry as Redis holds it.
pub fn encode_entry(entry: &BlockEntry) -> String {
    serde_json::to_string(entry).expect("entries serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(c: char) -> PeerName {
        PeerName::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn limits(max_entries: usize) -> BlockLimits {
        BlockLimits {
            max_entries,
            max_reason_bytes: 8,
        }
    }

    #[test]
    fn inserts_are_bounded_and_reasons_checked() {
        let list = BlockList::new(limits(2));
        assert!(list.insert(peer('a'), BlockEntry::now(None)).unwrap());
        assert!(!list
            .insert(peer('a'), BlockEntry::now(Some("x".into())))
            .unwrap());
        assert!(list.insert(peer('b'), BlockEntry::now(None)).unwrap());
        assert_eq!(
            list.insert(peer('c'), BlockEntry::now(None)),
            Err(BlockError::Full { max: 2 })
        );
        assert_eq!(
            list.check_room(&peer('c')),
            Err(BlockError::Full { max: 2 })
        );
        assert_eq!(list.check_room(&peer('a')), Ok(()));
        assert!(list.refuses(&peer('a')) && !list.refuses(&peer('c')));
        assert!(list.remove(&peer('a')) && !list.remove(&peer('a')));
        let l = list.limits();
        assert_eq!(
            l.check_reason("123456789"),
            Err(BlockError::ReasonTooLong { max: 8, len: 9 })
        );
        assert_eq!(l.check_reason("a\nb"), Err(BlockError::ReasonControl));
        assert_eq!(l.check_reason("stolen"), Ok(()));
    }

    #[test]
    fn replace_reports_the_difference_keeps_blocks_with_bad_reasons_and_bounds_the_list() {
        let list = BlockList::new(limits(2));
        list.insert(peer('a'), BlockEntry::now(None)).unwrap();
        let bad_reason = BlockEntry {
            reason: Some("line\nforged".into()),
            since: Some("yesterday".into()),
        };
        let (diff, dropped) = list.replace(vec![
            (peer('b'), bad_reason),
            (peer('c'), BlockEntry::now(None)),
            (peer('d'), BlockEntry::now(None)),
        ]);
        assert_eq!(diff.added, vec![peer('b'), peer('c')]);
        assert_eq!(diff.removed, vec![peer('a')]);
        assert_eq!(dropped, 1);
        let listed = list.list();
        assert_eq!(listed[0].peer_name, peer('b'));
        assert_eq!(
            listed[0].entry,
            BlockEntry {
                reason: None,
                since: None
            }
        );
    }

    #[test]
    fn the_file_round_trips_and_a_bad_peer_name_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let entries = vec![
            (peer('a'), BlockEntry::now(Some("stolen laptop".into()))),
            (peer('b'), BlockEntry::now(None)),
        ];
        store.save(&entries).unwrap();
        assert_eq!(store.load().unwrap(), Some(entries));
        std::fs::write(
            store.path(),
            r#"{"version":1,"blocked":[{"peer_name":"nope"}]}"#,
        )
        .unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("\"nope\" is not a PeerName"), "{err}");
    }

    #[test]
    fn redis_entries_decode_and_bad_ones_are_counted_without_unblocking() {
        let a = peer('a').as_str().to_owned();
        let b = peer('b').as_str().to_owned();
        let (entries, bad) = decode_entries(vec![
            (a, encode_entry(&BlockEntry::now(Some("r".into())))),
            (b, "{not json".into()),
            ("zz".into(), "{}".into()),
        ]);
        assert_eq!(bad, 2);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1.reason.as_deref(), Some("r"));
        assert_eq!(entries[1].0, peer('b'));
    }
}
