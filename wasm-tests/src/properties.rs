//! `proxy_get_property`.
//!
//! A property path is a list of names joined with NUL bytes, e.g.
//! `request\0path`. Lookup order:
//!
//! 1. properties of the acting stream (set by the test with
//!    [`crate::Host::set_stream_property`] or by the filter with
//!    `proxy_set_property`),
//! 2. host-wide properties set with [`crate::Host::set_property`],
//! 3. a few attributes Envoy derives from the stream, available while Envoy
//!    holds the header map (the same window in which the filter can read the
//!    headers): `request.{path,url_path,query,host,scheme,method,id,referer,
//!    useragent}`, `request.headers.<name>`, `response.code` (int64 little
//!    endian) and `response.headers.<name>`; plus `plugin_vm_id`.
//!
//! Anything else is `NotFound`, as in Envoy for an attribute it does not know.

use crate::headers::HeaderMap;
use crate::state::{Direction, HostState, Stream};

/// Joins path segments the way the SDK serialises them.
pub(crate) fn join_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

/// Looks a property up for the acting context.
pub(crate) fn lookup(state: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    lookup_in(state, state.stream(), path)
}

/// Looks a property up as seen from `stream` (or from the root context).
pub(crate) fn lookup_in(
    state: &HostState,
    stream: Option<&Stream>,
    path: &[u8],
) -> Option<Vec<u8>> {
    if let Some(value) = stream.and_then(|s| s.properties.get(path)) {
        return Some(value.clone());
    }
    if let Some(value) = state.properties.get(path) {
        return Some(value.clone());
    }
    let parts: Vec<&[u8]> = path.split(|b| *b == 0).collect();
    match parts.as_slice() {
        [b"plugin_vm_id"] => Some(state.vm_id.clone().into_bytes()),
        [b"request", rest @ ..] => request_attribute(stream?, rest),
        [b"response", rest @ ..] => response_attribute(stream?, rest),
        _ => None,
    }
}

fn headers_of<'a>(stream: &Stream, d: &'a Direction) -> Option<&'a HeaderMap> {
    (d.headers_visible || (stream.access_log_phase && d.headers_received)).then_some(&d.headers)
}

fn request_attribute(stream: &Stream, rest: &[&[u8]]) -> Option<Vec<u8>> {
    let headers = headers_of(stream, &stream.request)?;
    let header = |name: &str| headers.get(name.as_bytes()).map(<[u8]>::to_vec);
    let path = || headers.get(b":path").unwrap_or_default().to_vec();
    match rest {
        [b"path"] => header(":path"),
        [b"url_path"] => {
            let path = path();
            let end = path.iter().position(|b| *b == b'?').unwrap_or(path.len());
            Some(path[..end].to_vec())
        }
        [b"query"] => {
            let path = path();
            Some(
                path.iter()
                    .position(|b| *b == b'?')
                    .map(|at| path[at + 1..].to_vec())
                    .unwrap_or_default(),
            )
        }
        [b"host"] => header(":authority"),
        [b"scheme"] => header(":scheme"),
        [b"method"] => header(":method"),
        [b"id"] => header("x-request-id"),
        [b"referer"] => header("referer"),
        [b"useragent"] => header("user-agent"),
        [b"headers"] => Some(headers.serialize()),
        [b"headers", name] => headers.get(name).map(<[u8]>::to_vec),
        _ => None,
    }
}

fn response_attribute(stream: &Stream, rest: &[&[u8]]) -> Option<Vec<u8>> {
    let headers = headers_of(stream, &stream.response)?;
    match rest {
        [b"code"] => {
            let status = std::str::from_utf8(headers.get(b":status")?).ok()?;
            let code: i64 = status.trim().parse().ok()?;
            Some(code.to_le_bytes().to_vec())
        }
        [b"headers"] => Some(headers.serialize()),
        [b"headers", name] => headers.get(name).map(<[u8]>::to_vec),
        _ => None,
    }
}
