//! The HTTP surface: `fn app(state) -> Router`, one router per surface. Internal routes
//! serve the filter, public routes serve clients in the integration guide's shapes, BYOK
//! and session routes serve a caller's own keys and browser sessions, admin routes manage
//! the state. Who may call a route is the type of an argument of its handler
//! ([`identity::Internal`], [`identity::Caller`], [`identity::Admin`]).

mod admin;
mod byok;
mod console;
mod extract;
pub mod identity;
mod internal;
mod observe;
pub mod openapi;
mod ops;
mod public;
mod sessions;

use crate::error::AppError;
use crate::state::AppState;
use axum::Router;

pub use internal::build_snapshot;
pub use observe::Who;

/// A surface's routes, and the paths they were registered under: every route goes through
/// [`Routes::route`], so [`route_paths`] lists them all and a test holds the OpenAPI
/// document to it.
#[derive(Default)]
pub(crate) struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    pub(crate) fn route(
        mut self,
        path: &'static str,
        methods: axum::routing::MethodRouter<AppState>,
    ) -> Self {
        self.paths.push(path);
        self.router = self.router.route(path, methods);
        self
    }
}

fn surfaces() -> [Routes; 8] {
    [
        ops::router(),
        openapi::router(),
        internal::router(),
        public::router(),
        byok::router(),
        sessions::router(),
        admin::router(),
        console::router(),
    ]
}

/// Every path the control plane routes (templates, e.g. `/admin/v1/orgs/{id}`).
pub fn route_paths() -> Vec<&'static str> {
    surfaces().into_iter().flat_map(|s| s.paths).collect()
}

pub fn app(state: AppState) -> Router {
    surfaces()
        .into_iter()
        .fold(Router::new(), |app, s| app.merge(s.router))
        .fallback(|uri: axum::http::Uri| async move {
            // Under the API, the path is the API's and simply unknown; elsewhere, say where
            // the API is. The path is not echoed (it may carry anything a client sent).
            if uri.path().starts_with("/api/v1/llm/") {
                AppError::not_found(
                    "No such endpoint in the API (the integration guide lists them; GET /api/v1/llm/models lists the models).",
                )
            } else {
                AppError::not_found("No such endpoint. The API lives under /api/v1/llm.")
            }
        })
        // Errors always use the envelope (DESIGN: "Errors always use the envelope"), a known
        // path with an unsupported method included. Set after every merge: it applies to the
        // routes registered before it.
        .method_not_allowed_fallback(|| async {
            AppError::new(
                opsgate_core::ErrorKind::MethodNotAllowed,
                "This endpoint does not support that HTTP method.",
            )
        })
        .layer(axum::middleware::map_response(
            crate::error::envelope_plain_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}
