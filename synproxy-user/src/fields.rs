//! The six fields of the `synproxy` measurement, as Telegraf names them.

/// One column of `/proc/net/stat/synproxy`, in the kernel's print order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Entries,
    SynReceived,
    CookieInvalid,
    CookieValid,
    CookieRetrans,
    ConnReopened,
}

pub const FIELD_COUNT: usize = 6;

impl Field {
    /// Kernel print order; also the index order of [`Values`].
    pub const ALL: [Field; FIELD_COUNT] = [
        Field::Entries,
        Field::SynReceived,
        Field::CookieInvalid,
        Field::CookieValid,
        Field::CookieRetrans,
        Field::ConnReopened,
    ];

    /// Alphabetical, the order Telegraf writes fields in.
    pub const ALPHABETICAL: [Field; FIELD_COUNT] = [
        Field::ConnReopened,
        Field::CookieInvalid,
        Field::CookieRetrans,
        Field::CookieValid,
        Field::Entries,
        Field::SynReceived,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Field::Entries => "entries",
            Field::SynReceived => "syn_received",
            Field::CookieInvalid => "cookie_invalid",
            Field::CookieValid => "cookie_valid",
            Field::CookieRetrans => "cookie_retrans",
            Field::ConnReopened => "conn_reopened",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &[u8]) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name().as_bytes() == name)
    }
}

/// One value per field, indexed by [`Field::index`].
pub type Values<T> = [T; FIELD_COUNT];
