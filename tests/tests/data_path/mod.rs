//! The data path: echo, relay, steering, seal failures, errors, back-pressure, shutdown.

mod echo;
