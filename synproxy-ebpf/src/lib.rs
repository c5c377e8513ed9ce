//! Exists so that synproxy-user can name this crate as a build dependency (cargo
//! then rebuilds the agent when the programs change). The programs are the
//! `synproxy` binary target (src/main.rs).
#![no_std]
