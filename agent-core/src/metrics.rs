//! `--metrics-addr`: OpenMetrics text on `GET /metrics` (any path, in fact), served from one
//! thread. Each agent renders its figures with [`write_metric`], encoded by
//! `prometheus-client` as the nodes' metrics are.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` and serves `render()` to every request, until the process ends.
pub fn serve(addr: SocketAddr, render: Render) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} for metrics"))?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                // The request itself does not matter; read what is there so the client is not
                // reset before it reads the answer.
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let body = render() + "# EOF\n";
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    body
                );
            }
        })?;
    Ok(local)
}

/// Appends one metric family (`kind` `counter` or `gauge`; a counter's `_total` is added by the
/// encoding) with its samples.
pub fn write_metric(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(Vec<(&str, String)>, f64)],
) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use std::sync::atomic::AtomicU64;
    type Labels = Vec<(String, String)>;
    let labels = |l: &[(&str, String)]| -> Labels {
        l.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    // (counts stay integers on the wire, as they were: `… 1`, not `… 1.0`)
    let integral = samples
        .iter()
        .all(|(_, v)| v.fract() == 0.0 && v.abs() < 9e15);
    match (kind, integral) {
        ("counter", _) => {
            let family = Family::<Labels, Counter>::default();
            for (l, v) in samples {
                family.get_or_create(&labels(l)).inc_by(v.max(0.0) as u64);
            }
            registry.register(name.trim_end_matches("_total"), help, family);
        }
        (_, true) => {
            let family = Family::<Labels, Gauge>::default();
            for (l, v) in samples {
                family.get_or_create(&labels(l)).set(*v as i64);
            }
            registry.register(name, help, family);
        }
        _ => {
            let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
            for (l, v) in samples {
                family.get_or_create(&labels(l)).set(*v);
            }
            registry.register(name, help, family);
        }
    }
    let _ = prometheus_client::encoding::text::encode_registry(out, &registry);
}
