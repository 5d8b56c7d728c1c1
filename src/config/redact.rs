//! Secrets kept out of what the hub logs and prints: the password in a Redis URL and the
//! admin token.
//!
//! [`redact_url`] is the one place a URL is made fit to show; everything that logs, prints
//! or puts a Redis address into an error message goes through it (the cluster's
//! `joined the cluster` line, `ClusterError::Address`, the `[cluster]` checks), and
//! `check-config` prints [`Config::redacted`]. The URL is taken apart by the `url` crate,
//! the parser the `redis` client itself uses, so whatever the client would read as a
//! password is what is hidden: the userinfo password (`redis://user:pw@host`) and the
//! `pass` query parameter of `unix://` and `redis+unix://` addresses.

use super::Config;

/// What stands in for a secret in logs and printed configurations.
pub const REDACTED: &str = "***";

/// `text` fit to log or print: a URL with its password replaced by [`REDACTED`]
/// (`redis://user:***@host:6379/0`), unchanged when it holds none. Text that does not
/// parse as a URL may hold a password anywhere, so it is not shown at all, only why it
/// does not parse.
pub fn redact_url(text: &str) -> String {
    let mut url = match url::Url::parse(text) {
        Ok(url) => url,
        Err(e) => return format!("<not a URL ({e}); not shown, it may hold a password>"),
    };
    let mut redacted = false;
    if url.password().is_some() {
        // Only a URL with a host has a password, and such a URL takes a new one.
        redacted = url.set_password(Some(REDACTED)).is_ok();
        if !redacted {
            return "<a URL whose password cannot be hidden; not shown>".to_owned();
        }
    }
    if url.query_pairs().any(|(key, _)| key == "pass") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "pass" {
                    REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        redacted = true;
    }
    if redacted {
        url.to_string()
    } else {
        text.to_owned()
    }
}

impl Config {
    /// This configuration fit to print (`check-config`): the admin token and the Redis
    /// password replaced by [`REDACTED`], everything else as it is.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        if let Some(token) = &mut shown.admin.token {
            REDACTED.clone_into(token);
        }
        if let Some(cluster) = &mut shown.cluster {
            cluster.redis = redact_url(&cluster.redis);
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterSection;

    #[test]
    fn passwords_are_replaced_and_the_rest_is_kept() {
        let cases = [
            (
                "redis://user:secret@127.0.0.1:6379/0",
                "redis://user:***@127.0.0.1:6379/0",
            ),
            (
                "redis://:secret@redis.example:6380",
                "redis://:***@redis.example:6380",
            ),
            ("redis://u:p%40ss@h/1", "redis://u:***@h/1"),
            (
                "unix:///run/redis.sock?db=1&pass=secret",
                "unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "redis+unix:///run/redis.sock?user=u&pass=p%26w",
                "redis+unix:///run/redis.sock?user=u&pass=***",
            ),
            // Nothing secret: exactly as written.
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://user@127.0.0.1", "redis://user@127.0.0.1"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn what_does_not_parse_is_not_shown() {
        for url in [
            "redis://user:se cret@[bad",
            "not a url secret",
            "redis://u:secret@h:x",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("secret"), "{url} → {shown}");
            assert!(shown.contains("not shown"), "{shown}");
        }
    }

    #[test]
    fn a_redacted_config_hides_the_token_and_the_redis_password_only() {
        let mut config = Config::default();
        config.admin.token = Some("s3cret".into());
        config.cluster = Some(ClusterSection {
            redis: "redis://hub:pw@10.0.0.5:6379/0".into(),
            node: Some("hub-a".into()),
            ..ClusterSection::example()
        });
        let shown = config.redacted();
        assert_eq!(shown.admin.token.as_deref(), Some(REDACTED));
        let cluster = shown.cluster.as_ref().unwrap();
        assert_eq!(cluster.redis, "redis://hub:***@10.0.0.5:6379/0");
        assert_eq!(cluster.node.as_deref(), Some("hub-a"));
        let text = toml::to_string(&shown).unwrap();
        assert!(!text.contains("s3cret") && !text.contains(":pw@"), "{text}");
        let debug = format!("{:?}", config.cluster);
        assert!(
            debug.contains("hub:***@") && !debug.contains(":pw@"),
            "{debug}"
        );
        // Nothing else differs.
        let mut back = shown.clone();
        back.admin.token = config.admin.token.clone();
        back.cluster = config.cluster.clone();
        assert_eq!(
            toml::to_string(&back).unwrap(),
            toml::to_string(&config).unwrap()
        );
    }
}
