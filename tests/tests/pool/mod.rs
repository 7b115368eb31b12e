//! The connection manager: pool TTL, keep-alive, connection cap, reconnection.

mod cap;
mod keepalive;
mod simultaneous;
mod ttl;
