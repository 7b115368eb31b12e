//! The data path: echo, relay, steering, seal failures, errors, back-pressure, shutdown.

mod backpressure;
mod echo;
mod errors;
mod relay;
mod shutdown;
mod slow_receiver;
mod steering;
mod two_nodes;
