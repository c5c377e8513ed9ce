//! One published value and its exposition, rendered at most once per format.
//!
//! The sink publishes a new [`Page`] each round; the first scrape that wants
//! a format renders it, and every later scrape of the same round is served a
//! reference to that buffer (`Bytes` clones share it: a slow reader holds no
//! copy of its own).

use super::exposition::{render_shared, Format};
use super::Published;
use hyper::body::Bytes;
use std::sync::{Arc, OnceLock};

/// `None` when the encoder failed (it writes to a `String`: it does not).
type Rendered = OnceLock<Option<Bytes>>;

#[derive(Debug, Default)]
pub struct Page {
    published: Arc<Published>,
    text: Rendered,
    openmetrics: Rendered,
}

impl Page {
    pub fn new(published: Arc<Published>) -> Self {
        Self {
            published,
            text: OnceLock::new(),
            openmetrics: OnceLock::new(),
        }
    }

    /// The exposition in `format`, rendered on the first call for it.
    pub fn body(&self, format: Format) -> Option<Bytes> {
        let cell = match format {
            Format::Text => &self.text,
            Format::OpenMetrics => &self.openmetrics,
        };
        cell.get_or_init(|| {
            render_shared(Arc::clone(&self.published), format)
                .ok()
                .map(Bytes::from)
        })
        .clone()
    }
}
