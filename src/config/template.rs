//! `print-default-config`: the default configuration as commented TOML, generated from the
//! configuration's own definitions so that it cannot drift from them.
//!
//! Each section is printed under the doc comment of its [`Config`] field, and each key
//! under the doc comment of its field, read at run time through `documented`'s
//! [`DocumentedFields`] (whose derive refuses to compile a field without one). A key's
//! value is its default, from `Config::default()`, which takes it from the key's named
//! `DEFAULT_…` constant. A key absent by default (an `Option`, the `[cluster]` section, the
//! `[meshes]` entries and `[[objects]]`) is printed commented out, with its value from
//! [`Config::example`]. So adding a key is adding a documented field with a named default
//! (and an example if it is absent by default); the printed text follows, and the tests
//! below fail if a key is printed without a value or a section is left out.
//!
//! Doc comments are written as plain sentences for both readers; their backticks are
//! dropped in the printed text.

use documented::DocumentedFields;
use serde::Serialize;

use super::{ClusterSection, Config};

/// The lines above the first section.
const HEADER: &str = "\
p2ppi-hub configuration. Every key is optional; shown are the defaults, and commented out
an example of each key that is absent by default.
Environment overrides: P2PPI_<SECTION>__<KEY>, e.g. P2PPI_LIMITS__MAX_SESSIONS=5000.
Command-line flags override both.";

/// The default configuration as commented TOML (`p2ppi-hub print-default-config`).
pub fn default_config_toml() -> String {
    template().render(Shown::AsPrinted)
}

/// One line of the printed text.
#[derive(Debug, PartialEq)]
enum Line {
    Blank,
    /// A comment: a doc comment's line.
    Doc(String),
    /// A section header or a `key = value` line; `live` false: printed commented out.
    Toml {
        text: String,
        live: bool,
    },
    /// A key with neither a default nor an example: a mistake the tests catch.
    NoValue(String),
}

/// How [`Template::render`] treats the commented-out lines.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shown {
    /// As `print-default-config` prints them.
    AsPrinted,
    /// Every example line live (the tests load that text: it must be [`Config::example`]).
    #[cfg(test)]
    AllLive,
}

#[derive(Default)]
struct Template {
    lines: Vec<Line>,
}

/// The printed configuration, section by section.
fn template() -> Template {
    // Destructured, so a section added to Config without a line here does not compile.
    let Config {
        hub,
        tls,
        admin,
        limits,
        relay,
        shutdown,
        blocklist,
        log,
        cluster,
        meshes,
        objects,
    } = Config::default();
    let example = Config::example();
    let mut t = Template::default();
    t.docs(HEADER);
    t.section("hub", Some(&hub), &example.hub);
    t.section("tls", Some(&tls), &example.tls);
    t.section("admin", Some(&admin), &example.admin);
    t.section("limits", Some(&limits), &example.limits);
    t.section("relay", Some(&relay), &example.relay);
    t.section("shutdown", Some(&shutdown), &example.shutdown);
    t.section("blocklist", Some(&blocklist), &example.blocklist);
    t.section("log", Some(&log), &example.log);
    t.section("cluster", cluster.as_ref(), &ClusterSection::example());
    t.entries("meshes", &meshes, &example.meshes);
    t.tables("objects", &objects, &example.objects);
    t
}

impl Template {
    /// Comment lines from a doc comment.
    fn docs(&mut self, doc: &str) {
        self.lines.extend(
            doc.lines()
                .map(|line| Line::Doc(line.replace('`', "").trim_end().to_owned())),
        );
    }

    /// A blank line, then the section's doc comment (its field's in [`Config`]).
    fn heading(&mut self, name: &str) {
        self.lines.push(Line::Blank);
        self.docs(Config::get_field_docs(name).unwrap_or_default());
    }

    /// `[name]` and every key of `T` in its order, each under its doc comment: the
    /// default's value, else the example's commented out. A section absent by default
    /// (`default` `None`) is printed wholly commented out.
    fn section<T: Serialize + DocumentedFields>(
        &mut self,
        name: &str,
        default: Option<&T>,
        example: &T,
    ) {
        self.heading(name);
        let default = default.map(table);
        let example = table(example);
        self.lines.push(Line::Toml {
            text: format!("[{name}]"),
            live: default.is_some(),
        });
        for key in T::FIELD_NAMES {
            if super::RETIRED_KEYS.contains(&format!("{name}.{key}").as_str()) {
                continue;
            }
            self.docs(T::get_field_docs(key).unwrap_or_default());
            let value = default.as_ref().and_then(|d| d.get(*key));
            match (value, example.get(*key)) {
                (Some(value), _) => self.key_value(key, value, true),
                (None, Some(value)) => self.key_value(key, value, false),
                (None, None) => self.lines.push(Line::NoValue((*key).to_owned())),
            }
        }
    }

    /// `[name]` for a table whose keys are data (`[meshes]`): the default entries, then the
    /// example's commented out.
    fn entries<T: Serialize>(&mut self, name: &str, default: &T, example: &T) {
        self.heading(name);
        let default = table(default);
        self.lines.push(Line::Toml {
            text: format!("[{name}]"),
            live: true,
        });
        for (key, value) in &default {
            self.key_value(key, value, true);
        }
        for (key, value) in table(example)
            .iter()
            .filter(|(k, _)| !default.contains_key(*k))
        {
            self.key_value(key, value, false);
        }
    }

    /// `[[name]]` tables: the default ones, or else the example's commented out.
    fn tables<T: Serialize>(&mut self, name: &str, default: &[T], example: &[T]) {
        self.heading(name);
        let (shown, live) = if default.is_empty() {
            (example, false)
        } else {
            (default, true)
        };
        let mut wrapper = toml::Table::new();
        wrapper.insert(name.to_owned(), toml_value(shown));
        self.toml_lines(&wrapper, live);
    }

    fn key_value(&mut self, key: &str, value: &toml::Value, live: bool) {
        let mut one = toml::Table::new();
        one.insert(key.to_owned(), value.clone());
        self.toml_lines(&one, live);
    }

    fn toml_lines(&mut self, table: &toml::Table, live: bool) {
        let text = toml::to_string(table).unwrap_or_default();
        self.lines.extend(
            text.lines()
                .filter(|l| !l.is_empty())
                .map(|line| Line::Toml {
                    text: line.to_owned(),
                    live,
                }),
        );
    }

    fn render(&self, shown: Shown) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Blank => {}
                Line::Doc(text) if text.is_empty() => out.push('#'),
                Line::Doc(text) => {
                    out.push_str("# ");
                    out.push_str(text);
                }
                Line::Toml { text, live } => {
                    if !live && shown == Shown::AsPrinted {
                        out.push_str("# ");
                    }
                    out.push_str(text);
                }
                Line::NoValue(key) => {
                    out.push_str("# ");
                    out.push_str(key);
                    out.push_str(": no default and no example");
                }
            }
            out.push('\n');
        }
        out
    }
}

/// A serialized value as a TOML table (a section; empty if it is none).
fn table<T: Serialize>(value: &T) -> toml::Table {
    toml::Table::try_from(value).unwrap_or_default()
}

fn toml_value<T: Serialize + ?Sized>(value: &T) -> toml::Value {
    toml::Value::try_from(value).unwrap_or(toml::Value::Array(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
        table.try_into().unwrap()
    }

    fn same(a: &Config, b: &Config) -> bool {
        toml::to_string(a).unwrap() == toml::to_string(b).unwrap()
    }

    #[test]
    fn the_printed_text_loads_as_the_defaults() {
        assert!(same(&parse(&default_config_toml()), &Config::default()));
    }

    #[test]
    fn every_key_of_every_section_is_printed_under_its_doc_comment() {
        let t = template();
        // Every key has a value to show: its default or an example.
        let missing: Vec<_> = t
            .lines
            .iter()
            .filter_map(|l| match l {
                Line::NoValue(key) => Some(key),
                _ => None,
            })
            .collect();
        assert!(
            missing.is_empty(),
            "keys without default or example: {missing:?}"
        );
        // With the examples live, the text is Config::example(), which sets every key of
        // every section: so every key is printed, none twice, none unknown.
        let all = parse(&t.render(Shown::AllLive));
        assert!(same(&all, &Config::example()));
        let printed = toml::Table::try_from(&all).unwrap();
        for (section, value) in &printed {
            let doc = Config::get_field_docs(section).unwrap();
            let first = doc.lines().next().unwrap().replace('`', "");
            assert!(
                default_config_toml().contains(&format!("# {first}")),
                "[{section}] has its doc comment"
            );
            assert!(value.as_table().is_some_and(|t| !t.is_empty()) || value.is_array());
        }
        // Each key line (not a header, not a [[table]]'s) follows a comment line.
        let mut previous: Option<&Line> = None;
        for (i, line) in t.lines.iter().enumerate() {
            if let Line::Toml { text, .. } = line {
                let current_header = t.lines[..i].iter().rev().find_map(|l| match l {
                    Line::Toml { text, .. } if text.starts_with('[') => Some(text),
                    _ => None,
                });
                let header = text.starts_with('[');
                // Keys of a [[table]] and entries of [meshes] are data, documented above.
                let array_item = current_header.is_some_and(|h| h.starts_with("[["));
                let map_entry = current_header.is_some_and(|h| h == "[meshes]");
                if !header && !array_item && !map_entry {
                    assert!(
                        matches!(previous, Some(Line::Doc(d)) if !d.is_empty()),
                        "{text} has no doc comment"
                    );
                }
            }
            previous = Some(line);
        }
    }

    #[test]
    fn a_key_is_shown_with_its_field_doc_and_its_named_default() {
        let text = default_config_toml();
        let expect = [
            "# Most sessions held at once; further connections are closed at accept (counted).\n\
             max_sessions = 100000\n",
            "# Presence page: a heartbeat on every event stream this often.\n\
             event_heartbeat = \"15s\"\n",
            "# The hub's private key. Default: <data_dir>/hub.key.\n\
             # key = \"/etc/p2ppi-hub/hub.key\"\n",
            "# [cluster]\n",
            "# lease = \"10s\"\n",
            "[meshes]\n# 3f2a9c4e5b6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f = \"blue\"\n",
            "# [[objects]]\n# name = \"1d6ccc02-3ec4-453b-b986-470b610cb958\"\n",
        ];
        for expected in expect {
            assert!(text.contains(expected), "{expected}\nnot in\n{text}");
        }
        assert_eq!(
            crate::config::DEFAULT_LIMITS_MAX_SESSIONS,
            Config::default().limits.max_sessions
        );
        // Rustdoc's backticks are dropped.
        assert!(!text.contains('`'), "{text}");
    }
}
