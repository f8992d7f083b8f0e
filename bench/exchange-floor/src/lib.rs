//! The floor of any design that asks the control plane about each call.
//!
//! `scripts/bench` runs this filter on listeners of its own, beside the baseline (Envoy alone)
//! and opsgate, in two shapes (its plugin configuration):
//!
//! * `request`: every request is held while one empty exchange (`GET /healthz` on the
//!   control plane's cluster) is out, then forwarded unchanged: an authorize that does nothing;
//! * `request,response`: the same, and every response is held to its end while a second empty
//!   exchange is out: the metering loop's skeleton (an authorize before the call, a
//!   settlement the response waits for), with no parsing, no headers, no state and a control
//!   plane that does nothing.
//!
//! What Envoy spends per call here over Envoy alone is what the exchanges alone cost it,
//! whatever they carry: the figures that bound the filter's own cost (issue 10).

// The SDK's own calls, not the plugin's `host` wrappers (which map every status the host can
// return, clippy.toml): this filter is a measuring stick that runs only in `scripts/bench`.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Floor { response: false }) });
}}

struct Floor {
    /// Hold each response for a second exchange too.
    response: bool,
}

impl Context for Floor {}

impl RootContext for Floor {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.response = config.windows(8).any(|w| w == b"response");
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Call {
            response: self.response,
            in_response: false,
        }))
    }
}

struct Call {
    response: bool,
    /// The exchange out is the response's.
    in_response: bool,
}

impl Call {
    fn ask(&self) -> Action {
        let headers = vec![
            (":method", "GET"),
            (":path", "/healthz"),
            (":authority", "control-plane"),
        ];
        match self.dispatch_http_call(
            "opsgate_control_plane",
            headers,
            None,
            vec![],
            Duration::from_secs(5),
        ) {
            Ok(_) => Action::Pause,
            Err(_) => {
                self.send_http_response(503, vec![], Some(b"floor: no exchange"));
                Action::Pause
            }
        }
    }

    /// Holds the stream (buffering what arrives) until its end, then asks.
    fn ask_at_end(&self, end_of_stream: bool) -> Action {
        if end_of_stream {
            self.ask()
        } else {
            Action::Pause
        }
    }

    /// The response is held and asked about only in the `request,response` shape.
    fn on_response(&self, end_of_stream: bool) -> Action {
        if self.response {
            self.ask_at_end(end_of_stream)
        } else {
            Action::Continue
        }
    }
}

impl Context for Call {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        if self.in_response {
            self.resume_http_response();
        } else {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Call {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        self.ask_at_end(end_of_stream)
    }

    fn on_http_request_body(&mut self, _: usize, end_of_stream: bool) -> Action {
        self.ask_at_end(end_of_stream)
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        self.in_response = true;
        self.on_response(end_of_stream)
    }

    fn on_http_response_body(&mut self, _: usize, end_of_stream: bool) -> Action {
        self.on_response(end_of_stream)
    }
}
