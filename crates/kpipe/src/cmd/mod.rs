//! One module per command: argument definitions and the call into a library crate.

pub mod broker;
