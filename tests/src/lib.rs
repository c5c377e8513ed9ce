//! SYNPROXY scenario driver (see src/bin).
