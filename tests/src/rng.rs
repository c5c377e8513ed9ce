//! Tiny xorshift generator: random ports and sequence numbers only need to be
//! distinct between runs, not unpredictable.

use std::time::{SystemTime, UNIX_EPOCH};

pub struct XorShift(u64);

impl XorShift {
    /// Seeded from the clock and the pid so parallel processes diverge.
    pub fn from_time() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x2545_f491_4f6c_dd1d;
        XorShift(if seed == 0 { 1 } else { seed })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Source port for crafted flows: above the default ephemeral range start
    /// collisions are harmless anyway, but keep clear of 8080/8081.
    pub fn port(&mut self) -> u16 {
        20000 + (self.next_u32() % 12000) as u16
    }
}
