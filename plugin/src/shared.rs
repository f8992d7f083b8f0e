//! What a worker's root context shares with the requests it creates. A VM is
//! single-threaded, so `Rc<RefCell<…>>` is enough.

use crate::config::FilterConfig;
use opsgate_core::contract::{Settlement, Snapshot};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

pub struct Shared {
    pub config: FilterConfig,
    /// The last good snapshot; `None` until the first one arrives.
    pub snapshot: Option<Rc<Snapshot>>,
    /// Settlements waiting to be sent, oldest first.
    pub settle_queue: VecDeque<Settlement>,
    /// Settlements dropped because the queue was full (their holds expire and are charged
    /// as held: the ledger stays safe, the caller pays the bound).
    pub settle_dropped: u64,
}

impl Shared {
    pub fn new(config: FilterConfig) -> Self {
        Shared {
            config,
            snapshot: None,
            settle_queue: VecDeque::new(),
            settle_dropped: 0,
        }
    }

    /// Queues a settlement; bounded in memory.
    pub fn enqueue(&mut self, s: Settlement) {
        if self.settle_queue.len() >= self.config.settle_queue_max {
            self.settle_dropped += 1;
            proxy_wasm::hostcalls::log(
                proxy_wasm::types::LogLevel::Error,
                &format!("opsgate: settle queue full; hold {} will expire", s.hold_id),
            )
            .ok();
            return;
        }
        self.settle_queue.push_back(s);
    }
}

pub type SharedRef = Rc<RefCell<Shared>>;

/// Sends a request to the control plane through its Envoy cluster.
pub fn call_control_plane(
    ctx: &dyn proxy_wasm::traits::Context,
    config: &FilterConfig,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<u32, proxy_wasm::types::Status> {
    let auth = format!("Bearer {}", config.cp_token);
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", config.cp_authority.as_str()),
        ("authorization", auth.as_str()),
    ];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    ctx.dispatch_http_call(&config.cp_cluster, headers, body, vec![], config.cp_timeout)
}

/// Status of a callout response; 0 when none arrived (reset, timeout, no cluster host).
pub fn callout_status(ctx: &dyn proxy_wasm::traits::Context, num_headers: usize) -> u16 {
    if num_headers == 0 {
        return 0;
    }
    ctx.get_http_call_response_header(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn log(level: proxy_wasm::types::LogLevel, msg: &str) {
    proxy_wasm::hostcalls::log(level, msg).ok();
}
