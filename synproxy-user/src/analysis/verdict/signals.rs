//! The verdict's states and the signals that lead to them.

/// What a namespace's defense is doing, the most severe last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DefenseState {
    /// The namespace's first rounds: its baselines are learnt, not judged.
    #[default]
    Learning,
    /// Nothing fires.
    Calm,
    /// SYNPROXY answers a SYN flood with cookies; nothing behind it suffers.
    SynFloodAbsorbed,
    /// ACKs with cookies SYNPROXY rejects arrive in numbers.
    InvalidAckFlood,
    /// The kernel's own SYN cookies are in use: a listener's SYN queue
    /// overflowed, so a SYN flood reaches a port SYNPROXY does not cover.
    UnprotectedSynFlood,
    /// The listener behind the proxy cannot keep up: its queues drop, or
    /// clients' ACKs arrive again because the server never answered SYNPROXY.
    BackendSaturated,
    /// conntrack's table is full or dropping entries; SYNPROXY depends on it.
    ConntrackExhausted,
}

impl DefenseState {
    pub const ALL: [DefenseState; 7] = [
        DefenseState::Learning,
        DefenseState::Calm,
        DefenseState::SynFloodAbsorbed,
        DefenseState::InvalidAckFlood,
        DefenseState::UnprotectedSynFlood,
        DefenseState::BackendSaturated,
        DefenseState::ConntrackExhausted,
    ];

    /// The name in line protocol, on /metrics (`state` label) and in logs.
    pub fn name(self) -> &'static str {
        match self {
            DefenseState::Learning => "learning",
            DefenseState::Calm => "calm",
            DefenseState::SynFloodAbsorbed => "syn_flood_absorbed",
            DefenseState::InvalidAckFlood => "invalid_ack_flood",
            DefenseState::UnprotectedSynFlood => "unprotected_syn_flood",
            DefenseState::BackendSaturated => "backend_saturated",
            DefenseState::ConntrackExhausted => "conntrack_exhausted",
        }
    }

    /// Higher is worse (learning and calm are 0 and 1): the order of
    /// [`DefenseState::ALL`].
    pub fn severity(self) -> u8 {
        self as u8
    }
}

/// One input of the verdict: a counter's rate, or conntrack's fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SYNPROXY `syn_received`.
    SynReceived,
    /// SYNPROXY `cookie_invalid`.
    CookieInvalid,
    /// SYNPROXY `cookie_retrans`: a client's ACK again while the server has
    /// not answered the SYN SYNPROXY sent it.
    CookieRetrans,
    /// TcpExt `SyncookiesSent`: the kernel's own cookies.
    KernelSyncookies,
    /// TcpExt `ListenDrops` (which counts `ListenOverflows` and SYN-queue drops).
    ListenDrops,
    /// conntrack `drop` + `early_drop` + `insert_failed`.
    ConntrackDrops,
    /// `nf_conntrack_count` / `nf_conntrack_max`.
    ConntrackFull,
}

impl Signal {
    pub const COUNT: usize = 7;
    pub const ALL: [Signal; Signal::COUNT] = [
        Signal::SynReceived,
        Signal::CookieInvalid,
        Signal::CookieRetrans,
        Signal::KernelSyncookies,
        Signal::ListenDrops,
        Signal::ConntrackDrops,
        Signal::ConntrackFull,
    ];

    /// The state this signal leads to when it fires.
    pub fn state(self) -> DefenseState {
        match self {
            Signal::SynReceived => DefenseState::SynFloodAbsorbed,
            Signal::CookieInvalid => DefenseState::InvalidAckFlood,
            Signal::KernelSyncookies => DefenseState::UnprotectedSynFlood,
            Signal::CookieRetrans | Signal::ListenDrops => DefenseState::BackendSaturated,
            Signal::ConntrackDrops | Signal::ConntrackFull => DefenseState::ConntrackExhausted,
        }
    }

    /// The name in reasons.
    pub fn name(self) -> &'static str {
        match self {
            Signal::SynReceived => "syn_received",
            Signal::CookieInvalid => "cookie_invalid",
            Signal::CookieRetrans => "cookie_retrans",
            Signal::KernelSyncookies => "TcpExtSyncookiesSent",
            Signal::ListenDrops => "TcpExtListenDrops",
            Signal::ConntrackDrops => "conntrack_drops",
            Signal::ConntrackFull => "conntrack_fill",
        }
    }

    /// Events per second below which a signal never fires, however quiet the
    /// namespace was: floods are hundreds per second and more, while a busy
    /// server's normal SYNs are covered by its baseline. The TCP stack's and
    /// conntrack's drops are losses, so a few per second already count.
    pub fn default_floor(self) -> f64 {
        match self {
            Signal::SynReceived | Signal::CookieInvalid => 50.0,
            Signal::KernelSyncookies => 10.0,
            Signal::CookieRetrans => 5.0,
            Signal::ListenDrops | Signal::ConntrackDrops => 1.0,
            Signal::ConntrackFull => 0.0,
        }
    }
}
