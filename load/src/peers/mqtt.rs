//! The Mosquitto side of the comparison: the same fan-out over MQTT 3.1.1 with mutual TLS
//! from the same CA: every subscriber subscribes to one topic at QoS 0 and one publisher
//! publishes the stamped payload at the same rate; receivers scan each payload for its stamp.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};

/// The topic every subscriber subscribes to.
pub const TOPIC: &str = "p2ppi/bench/presence";

/// An MQTT client over mutual TLS.
pub fn client(id: &str, addr: &str, tls: Arc<rustls::ClientConfig>) -> (AsyncClient, EventLoop) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    // The hub certificate is for "localhost" (and 127.0.0.1); rumqttc verifies the host.
    let host = if host == "127.0.0.1" {
        "localhost"
    } else {
        host
    };
    let mut options = MqttOptions::new(id, host, port.parse().expect("port"));
    options.set_keep_alive(Duration::from_secs(60));
    options.set_clean_session(true);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // As patient as the P2PPI peers (60 s): thousands connect at once.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(60);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Polls until the CONNACK and SUBACK arrived; then the event loop yields publishes.
pub async fn subscribe(client: &AsyncClient, eventloop: &mut EventLoop) -> anyhow::Result<()> {
    client.subscribe(TOPIC, QoS::AtMostOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
            return Ok(());
        }
    }
}

/// Receives publishes until the connection fails, recording every stamp for receiver
/// `slot`; a failure is recorded and returned.
pub async fn receive(
    slot: usize,
    client: AsyncClient,
    mut eventloop: EventLoop,
    receivers: Arc<super::receive::Receivers>,
) -> Result<(), String> {
    let _client = client;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                receivers.record_bytes(slot, &publish.payload)
            }
            Ok(_) => {}
            Err(e) => {
                let e = e.to_string();
                receivers.fail(slot, &e);
                return Err(e);
            }
        }
    }
}
