//! The six fields of the `synproxy` measurement, as Telegraf names them: the
//! constant `entries` column, then the kernel's five counters
//! ([`synproxy_common::Counter`], the one definition of their names and order).

use synproxy_common::{Counter, COUNTER_COUNT, ENTRIES};

/// One column of `/proc/net/stat/synproxy`, in the kernel's print order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Entries,
    Counter(Counter),
}

pub const FIELD_COUNT: usize = COUNTER_COUNT + 1;

impl From<Counter> for Field {
    fn from(c: Counter) -> Self {
        Field::Counter(c)
    }
}

impl Field {
    /// Kernel print order; also the index order of [`Values`].
    pub const ALL: [Field; FIELD_COUNT] = [
        Field::Entries,
        Field::Counter(Counter::ALL[0]),
        Field::Counter(Counter::ALL[1]),
        Field::Counter(Counter::ALL[2]),
        Field::Counter(Counter::ALL[3]),
        Field::Counter(Counter::ALL[4]),
    ];

    /// Alphabetical, the order Telegraf writes fields in.
    pub const ALPHABETICAL: [Field; FIELD_COUNT] = [
        Field::Counter(Counter::ConnReopened),
        Field::Counter(Counter::CookieInvalid),
        Field::Counter(Counter::CookieRetrans),
        Field::Counter(Counter::CookieValid),
        Field::Entries,
        Field::Counter(Counter::SynReceived),
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Field::Entries => ENTRIES,
            Field::Counter(c) => c.name(),
        }
    }

    pub const fn index(self) -> usize {
        match self {
            Field::Entries => 0,
            Field::Counter(c) => 1 + c.index(),
        }
    }

    pub fn from_name(name: &[u8]) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name().as_bytes() == name)
    }
}

/// One value per field, indexed by [`Field::index`].
pub type Values<T> = [T; FIELD_COUNT];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_matches_the_kernel_header() {
        let names = Field::ALL.map(Field::name);
        assert_eq!(names, synproxy_common::STAT_COLUMNS);
        for (i, f) in Field::ALL.into_iter().enumerate() {
            assert_eq!(f.index(), i);
        }
        let mut sorted = names;
        sorted.sort_unstable();
        assert_eq!(Field::ALPHABETICAL.map(Field::name), sorted);
    }
}
