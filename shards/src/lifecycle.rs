//! Connection lifecycle: the states a peer connection moves through, and the reconnection
//! backoff schedule. Pure logic, time passed in.

/// Where a connection to a peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Known but not yet dialed.
    New,
    /// Dialing, or handshaking.
    Connecting,
    /// Handshake done; messages flow.
    Connected,
    /// Closed; may be re-dialed.
    Disconnected,
    /// Gave up after the last reconnection attempt.
    Failed,
}

impl ConnState {
    /// Every state, in declaration order (for metrics that list each one).
    pub const ALL: [ConnState; 5] = [
        ConnState::New,
        ConnState::Connecting,
        ConnState::Connected,
        ConnState::Disconnected,
        ConnState::Failed,
    ];

    /// Lower-case name, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::New => "new",
            ConnState::Connecting => "connecting",
            ConnState::Connected => "connected",
            ConnState::Disconnected => "disconnected",
            ConnState::Failed => "failed",
        }
    }
}
