//! Names of the Redis keys and channels the Rust side touches directly (the Lua scripts build
//! the same names from the same prefix; the module header of `cluster` lists them all).

/// Prefix of every key and channel.
pub(crate) const PREFIX: &str = "p2ppi:";

/// The channel carrying a mesh's changes.
pub(crate) fn mesh_channel(mesh: &str) -> String {
    format!("{PREFIX}chan:mesh:{mesh}")
}

/// The mesh a channel name belongs to, if it is a mesh channel.
pub(crate) fn mesh_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix(PREFIX)?.strip_prefix("chan:mesh:")
}

/// A hub's inbox channel.
pub(crate) fn inbox_channel(hub: &str) -> String {
    format!("{PREFIX}chan:inbox:{hub}")
}

/// The channel announcing changes of the cluster-wide hub objects.
pub(crate) fn hub_objects_channel() -> String {
    format!("{PREFIX}chan:hub-objects")
}

/// The channel announcing changes of the cluster's block list (DESIGN 10).
pub(crate) fn blocked_channel() -> String {
    format!("{PREFIX}chan:blocked")
}

/// The hash of a mesh's epoch and sequence number.
pub(crate) fn mesh(mesh: &str) -> String {
    format!("{PREFIX}mesh:{mesh}")
}

/// The hash of the cluster-wide hub objects.
pub(crate) fn hub_objects() -> String {
    format!("{PREFIX}hub-objects")
}

/// The hash of peers routed to a hub (peer-name → mesh).
/// The route table: PeerName → the hub holding its session.
pub(crate) fn routes() -> String {
    format!("{PREFIX}routes")
}

pub(crate) fn owned(hub: &str) -> String {
    format!("{PREFIX}owned:{hub}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_channels_round_trip_even_with_separators_in_the_name() {
        for mesh in ["default", "a:b", "chan:mesh:x", ""] {
            assert_eq!(mesh_of_channel(&mesh_channel(mesh)), Some(mesh));
        }
        assert_eq!(mesh_of_channel(&inbox_channel("hub")), None);
        assert_eq!(mesh_of_channel(&hub_objects_channel()), None);
        assert_eq!(mesh_of_channel(&blocked_channel()), None);
    }
}
