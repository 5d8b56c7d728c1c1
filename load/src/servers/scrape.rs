//! Reading a hub's `/metrics` (the Prometheus text exposition) from its admin API: one
//! gauge, one sample, or every series of a metric by one label. The harness samples the
//! hubs with these while it runs (the write queue while Redis is away, sessions).

/// The value of the unlabelled gauge `name` on the hub whose admin API is at `admin`.
pub fn gauge(admin: &str, name: &str) -> Option<u64> {
    sample(&metrics_text(admin)?, name)
}

/// The hub's `/metrics` (Prometheus text), from its admin API at `admin`.
pub fn metrics_text(admin: &str) -> Option<String> {
    ureq::get(&format!("http://{admin}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()
}

/// The value of the sample `name` in the Prometheus text `text`: a metric's name, with
/// its labels if it has any, as the exposition writes them
/// (`p2ppi_relay_rejected_total{reason="view_full"}`).
pub fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// Each series of the metric `name` in the Prometheus text `text`, by the value of its
/// label `label` (`p2ppi_cluster_queue_refused_total{kind="state"} 3` → `state` → 3).
pub fn by_label(text: &str, name: &str, label: &str) -> std::collections::BTreeMap<String, u64> {
    let key = format!("{label}=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            let start = labels.find(&key)? + key.len();
            let end = labels[start..].find('"')? + start;
            let value = value.trim().parse::<f64>().ok()?;
            Some((labels[start..end].to_owned(), value as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_by_one_label() {
        let text = "# TYPE p2ppi_cluster_queue_refused_total counter\n\
                    p2ppi_cluster_queue_refused_total{kind=\"message\"} 2\n\
                    p2ppi_cluster_queue_refused_total{hub=\"a\",kind=\"state\"} 45\n\
                    p2ppi_cluster_queue_refused_total_other{kind=\"x\"} 1\n\
                    p2ppi_cluster_queue_bytes 300\n";
        let refused = by_label(text, "p2ppi_cluster_queue_refused_total", "kind");
        assert_eq!(
            refused,
            std::collections::BTreeMap::from([("message".into(), 2), ("state".into(), 45)])
        );
        assert!(by_label(text, "p2ppi_cluster_queue_bytes", "kind").is_empty());
        assert_eq!(sample(text, "p2ppi_cluster_queue_bytes"), Some(300));
    }
}
