//! The plain-HTTP pages served on the WebSocket port.

use super::http::{self, Route};
use crate::metrics::Metrics;
use crate::signaling::Signaling;

/// The demo page and the JavaScript client, built into the binary.
const DEMO_PAGE: &str = include_str!("../../web/index.html");
const CLIENT_JS: &str = include_str!("../../web/client.js");

/// The complete response for `route` (`head_only`: a HEAD request, no body).
pub fn render(route: Route, head_only: bool, metrics: &Metrics, core: &Signaling, open: usize) -> Vec<u8> {
    match route {
        Route::Index => http::ok("text/html; charset=utf-8", DEMO_PAGE.as_bytes(), head_only),
        Route::ClientJs => http::ok("text/javascript; charset=utf-8", CLIENT_JS.as_bytes(), head_only),
        Route::Health => http::ok("text/plain; charset=utf-8", b"ok\n", head_only),
        Route::Metrics => {
            let body = metrics.render(&core.stats(), &core.counters(), open);
            http::ok("text/plain; version=0.0.4; charset=utf-8", body.as_bytes(), head_only)
        }
    }
}
