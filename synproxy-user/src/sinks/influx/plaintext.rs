//! The one start-up warning for credentials sent in the clear: a token or a
//! password to a plain `http://` InfluxDB URL whose host is not loopback.

use hyper::Uri;
use std::net::IpAddr;

/// The warning for `uri` (the write URL), or `None` when the credentials stay
/// on this host or travel inside TLS (or there are none).
pub(super) fn warning(uri: &Uri, https: bool, what: Option<&str>) -> Option<String> {
    let what = what?;
    if https {
        return None;
    }
    let host = uri.host()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!(
            "--influx-url http://{host}: the {what} goes over the network in plain text; use https:// (or a loopback address)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::warning;

    fn warns(url: &str, https: bool, what: Option<&str>) -> bool {
        warning(&url.parse().unwrap(), https, what).is_some()
    }

    #[test]
    fn only_credentials_in_the_clear_to_another_host() {
        assert!(warns(
            "http://influx.example:8086/write",
            false,
            Some("token")
        ));
        assert!(warns("http://10.0.0.5:8086/write", false, Some("password")));
        assert!(warns(
            "http://[2001:db8::1]:8086/write",
            false,
            Some("token")
        ));
        assert!(!warns(
            "https://influx.example:8086/write",
            true,
            Some("token")
        ));
        assert!(!warns("http://influx.example:8086/write", false, None));
        for local in [
            "http://127.0.0.1:8086/write",
            "http://127.3.0.1:8086/write",
            "http://localhost:8086/write",
            "http://[::1]:8086/write",
        ] {
            assert!(!warns(local, false, Some("token")), "{local}");
        }
        let text = warning(
            &"http://influx.example:8086/api/v2/write".parse().unwrap(),
            false,
            Some("token"),
        )
        .unwrap();
        assert!(
            text.contains("influx.example") && text.contains("token"),
            "{text}"
        );
    }
}
