//! Loading the configuration from its layers — the TOML file, `P2PPI_…` environment
//! variables, command-line flags — so that every error says where it is: the key path
//! (`limits.max_sessions`) and where the value came from (the file and its line, the
//! variable, or the flag).
//!
//! The file is deserialized from its spanned parse, so a wrong value points at its line, and
//! through `serde_path_to_error`, which names the key. Each override is applied to the merged
//! table and checked at once, so its error names it. The range checks of
//! [`Config::validate`] run on the result and are blamed on the last layer that set the key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_path_to_error::Segment;
use toml::de::{DeTable, DeValue};

use super::{Config, ConfigError, ENV_PREFIX};

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file.
    File {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the key, when known.
        line: Option<usize>,
    },
    /// An environment variable (`P2PPI_LIMITS__MAX_SESSIONS`).
    Env(String),
    /// A command-line flag (`--listen`).
    Flag(&'static str),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File {
                path,
                line: Some(line),
            } => write!(f, "{} line {line}", path.display()),
            Self::File { path, line: None } => write!(f, "{}", path.display()),
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
            Self::Default => f.write_str("the default"),
        }
    }
}

/// One setting given outside the file: an environment variable or a command-line flag.
#[derive(Debug, Clone)]
pub struct Override {
    origin: Origin,
    section: String,
    key: String,
    value: toml::Value,
}

impl Override {
    /// A flag that sets `key` (`section.key`, e.g. `hub.listen`) to `value`.
    ///
    /// # Errors
    /// [`ConfigError::Setting`] when the value has no TOML form (a path that is not UTF-8).
    ///
    /// # Panics
    /// When `key` has no `.`: flags name their key in the source.
    pub fn flag(
        flag: &'static str,
        key: &'static str,
        value: &impl Serialize,
    ) -> Result<Self, ConfigError> {
        let origin = Origin::Flag(flag);
        let (section, key) = key.split_once('.').expect("a flag's key is section.key");
        let value = toml::Value::try_from(value).map_err(|e| ConfigError::Setting {
            origin: origin.clone(),
            key: format!("{section}.{key}"),
            message: e.to_string(),
        })?;
        Ok(Self {
            origin,
            section: section.to_owned(),
            key: key.to_owned(),
            value,
        })
    }

    /// The overrides among environment variables: `P2PPI_<SECTION>__<KEY>=VALUE`. A value is
    /// TOML if it parses as one (numbers, booleans, arrays), else a string. Variables with
    /// the prefix but without `__` are not settings and are passed over.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Self> {
        vars.into_iter()
            .filter_map(|(name, value)| {
                let (section, key) = name.strip_prefix(ENV_PREFIX)?.split_once("__")?;
                let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
                let value = format!("v = {value}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or(toml::Value::String(value));
                Some(Self {
                    origin: Origin::Env(name),
                    section,
                    key,
                    value,
                })
            })
            .collect()
    }

    fn key_path(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    /// Sets the value in `table` and checks the result, naming this override on error.
    fn apply(&self, table: &mut toml::Table) -> Result<(), ConfigError> {
        if self.key_path() == "tls.keylog" {
            // Secrets are written only when the configuration file says so: an inherited
            // environment (or a flag in a service's command line) never turns the key log on.
            return Err(ConfigError::Setting {
                origin: self.origin.clone(),
                key: self.key_path(),
                message: "can only be set in the configuration file".into(),
            });
        }
        let entry = table
            .entry(self.section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section) = entry else {
            return Err(ConfigError::Setting {
                origin: self.origin.clone(),
                key: self.key_path(),
                message: format!("`{}` is not a [section]", self.section),
            });
        };
        section.insert(self.key.clone(), self.value.clone());
        // Only this layer's own key is judged here: a section that later layers complete
        // (`[cluster]` set by several variables, in any order) is judged whole at the end.
        match deserialize(toml::Value::Table(table.clone())) {
            Err((path, e)) if path.to_string() == self.key_path() => Err(ConfigError::Setting {
                origin: self.origin.clone(),
                key: path.to_string(),
                message: e.message().to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// The configuration file's text.
struct ConfigFile {
    path: PathBuf,
    text: String,
}

impl ConfigFile {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            text,
        })
    }

    fn at(&self, line: Option<usize>) -> Origin {
        Origin::File {
            path: self.path.clone(),
            line,
        }
    }

    /// Checks the file on its own and returns it as a table for the overrides.
    fn check(&self) -> Result<toml::Table, ConfigError> {
        let root = DeTable::parse(&self.text).map_err(|e| self.syntax(&e))?;
        deserialize(toml::Deserializer::from(root.clone())).map_err(|(path, e)| {
            let line = e
                .span()
                .or_else(|| span_of(root.get_ref(), &path))
                .map(|span| line_at(&self.text, span.start));
            ConfigError::Setting {
                origin: self.at(line),
                key: path.to_string(),
                message: e.message().to_owned(),
            }
        })?;
        self.text
            .parse::<toml::Table>()
            .map_err(|e| self.syntax(&e))
    }

    fn syntax(&self, e: &toml::de::Error) -> ConfigError {
        let before = e
            .span()
            .and_then(|s| self.text.get(..s.start))
            .unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        ConfigError::Syntax {
            path: self.path.clone(),
            line: line_at(&self.text, before.len()),
            column: before[line_start..].chars().count() + 1,
            message: e.message().trim_end().replace('\n', "; "),
        }
    }

    /// The line of `key` (`section.key`) in the file, if the file sets it.
    fn line_of(&self, key: &str) -> Option<usize> {
        let root = DeTable::parse(&self.text).ok()?;
        let steps: Vec<Segment> = match key.split_once('.') {
            Some((section, key)) => vec![map_key(section), map_key(key)],
            None => vec![map_key(key)],
        };
        let span = walk(root.get_ref(), &steps)?;
        Some(line_at(&self.text, span.start))
    }
}

fn map_key(key: &str) -> Segment {
    Segment::Map {
        key: key.to_owned(),
    }
}

type PathError = (serde_path_to_error::Path, toml::de::Error);

fn deserialize<'de, D>(deserializer: D) -> Result<Config, PathError>
where
    D: serde::Deserializer<'de, Error = toml::de::Error>,
{
    serde_path_to_error::deserialize(deserializer).map_err(|e| (e.path().clone(), e.into_inner()))
}

/// The span of the value at `path`, as far as the document has it.
fn span_of(root: &DeTable<'_>, path: &serde_path_to_error::Path) -> Option<Range<usize>> {
    let steps: Vec<Segment> = path.iter().cloned().collect();
    walk(root, &steps)
}

fn walk(root: &DeTable<'_>, steps: &[Segment]) -> Option<Range<usize>> {
    let (Segment::Map { key }, rest) = steps.split_first()? else {
        return None;
    };
    let mut value: &toml::Spanned<DeValue<'_>> = root.get(key.as_str())?;
    for step in rest {
        value = match step {
            Segment::Map { key } => value.get_ref().get(key.as_str()),
            Segment::Seq { index } => value.get_ref().get(*index),
            _ => None,
        }?;
    }
    Some(value.span())
}

/// The 1-based line of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Reads a TOML file, applies `P2PPI_…` environment overrides from `env`, and checks
    /// the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the file line or variable at fault.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load_layers(path, Override::from_env(env))
    }

    /// Reads a TOML file, applies `overrides` in order (environment, then flags), and checks
    /// the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the file line, variable or flag at fault.
    pub fn load_layers(
        path: Option<&Path>,
        overrides: impl IntoIterator<Item = Override>,
    ) -> Result<Self, ConfigError> {
        let file = path.map(ConfigFile::read).transpose()?;
        let mut table = match &file {
            Some(file) => file.check()?,
            None => toml::Table::new(),
        };
        let mut applied = Vec::new();
        for layer in overrides {
            layer.apply(&mut table)?;
            applied.push(layer);
        }
        let config =
            deserialize(toml::Value::Table(table)).map_err(|(path, e)| ConfigError::Setting {
                origin: Origin::Default,
                key: path.to_string(),
                message: e.message().to_owned(),
            })?;
        config.validate().map_err(|invalid| {
            let origin = applied
                .iter()
                .rev()
                .find(|layer| layer.key_path() == invalid.key)
                .map(|layer| layer.origin.clone())
                .or_else(|| {
                    let file = file.as_ref()?;
                    let line = file.line_of(&invalid.key)?;
                    Some(file.at(Some(line)))
                })
                .unwrap_or(Origin::Default);
            ConfigError::Invalid {
                origin,
                key: invalid.key,
                reason: invalid.reason,
            }
        })?;
        Ok(config)
    }
}
