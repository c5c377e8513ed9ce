//! The start-up gate of the network outputs. The Prometheus listener is bound
//! and the InfluxDB writer started early (a port in use is a start-up error),
//! but both run with the start-up capabilities until the capability drop.
//! So no HTTP request is read and nothing is sent to InfluxDB (nor an answer
//! parsed) until the drop is done: the connection tasks and the writer wait
//! here first. The gate opens once; if it is dropped unopened (the agent
//! stops because the drop failed) the waiters give up.

use tokio::sync::watch;

/// Held by `main`: opens the gate after the capability drop.
#[derive(Debug)]
pub struct GateOpener(watch::Sender<bool>);

/// Held by the network outputs: waits for the gate to open.
#[derive(Clone, Debug)]
pub struct Gate(watch::Receiver<bool>);

/// A closed gate and its opener.
pub fn gate() -> (GateOpener, Gate) {
    let (tx, rx) = watch::channel(false);
    (GateOpener(tx), Gate(rx))
}

impl GateOpener {
    pub fn open(&self) {
        self.0.send_replace(true);
    }
}

impl Gate {
    /// A gate that is open from the start (outputs started after the drop).
    pub fn open() -> Gate {
        let (opener, gate) = gate();
        opener.open();
        gate
    }

    /// Resolves when the gate is open (true), or when it never will be:
    /// its opener is gone (false).
    pub async fn opened(&mut self) -> bool {
        self.0.wait_for(|open| *open).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_opener() {
        let (opener, mut gate) = gate();
        let mut early = gate.clone();
        let waiting = tokio::spawn(async move { early.opened().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        opener.open();
        assert!(waiting.await.expect("joins"));
        assert!(gate.opened().await);
    }

    #[tokio::test]
    async fn gives_up_when_the_opener_is_dropped() {
        let (opener, mut gate) = gate();
        drop(opener);
        assert!(!gate.opened().await);
        assert!(Gate::open().opened().await);
    }
}
