//! The soak's HTTP on loopback: the tests crate's client (one request per
//! connection) with a short timeout, for scraping `/metrics` and talking to
//! InfluxDB's `/ping` and `/query`.

use super::http_client;
use anyhow::Result;
use std::time::Duration;

pub use http_client::{encode, free_port};

/// No answer within this is a failure (the machine may be loaded).
const TIMEOUT: Duration = Duration::from_secs(5);

/// `method path` with `body` (form-encoded when not empty): (status, body).
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let answer = http_client::request(addr, method, path, body.as_bytes(), TIMEOUT)?;
    Ok((answer.status, answer.body))
}
