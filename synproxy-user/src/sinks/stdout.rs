//! Line protocol on stdout, one flush per sampling round so a reader (Telegraf
//! execd) sees whole lines. A closed stdout is reported as such, not panicked on.

use super::line_protocol::LineEncoder;
use crate::sample::{EbpfSample, ProbesSample, Sample};
use std::io::{self, Write};

pub struct StdoutSink {
    encoder: LineEncoder,
    buf: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader went away (EPIPE): time to stop, not an error to shout about.
    #[error("stdout closed")]
    Closed,
    #[error("stdout: {0}")]
    Io(io::Error),
}

impl StdoutSink {
    pub fn new(encoder: LineEncoder) -> Self {
        Self {
            encoder,
            buf: Vec::with_capacity(512),
        }
    }

    pub fn write(&mut self, samples: &[Sample]) -> Result<(), SinkError> {
        self.write_round(samples, &[], None)
    }

    /// The `synproxy` lines, then the eBPF lines, in one write.
    pub fn write_round(
        &mut self,
        samples: &[Sample],
        ebpf: &[EbpfSample],
        probes: Option<&ProbesSample>,
    ) -> Result<(), SinkError> {
        self.buf.clear();
        for sample in samples {
            self.encoder.encode(sample, &mut self.buf);
        }
        for sample in ebpf {
            self.encoder.encode_ebpf(sample, &mut self.buf);
        }
        if let Some(probes) = probes {
            self.encoder.encode_probes(probes, &mut self.buf);
        }
        let mut out = io::stdout().lock();
        out.write_all(&self.buf)
            .and_then(|()| out.flush())
            .map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe => SinkError::Closed,
                _ => SinkError::Io(e),
            })
    }
}
