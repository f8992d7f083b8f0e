//! Who is calling: service keys against the snapshot, `uc_` keys and sessions through the
//! credential cache (authorize decides), JWTs as Envoy's `jwt_authn` verified them,
//! the identity headers for non-metered calls, and the cookie CSRF rule.

use super::*;

impl Filter {
    pub(super) fn authenticate(&mut self, cred: &Credential<'_>) -> Authn {
        match cred {
            Credential::ServiceKey(key) => match self.service_principal(key) {
                Ok(p) => Authn::Ready(p),
                Err(e) => Authn::Refused(e),
            },
            Credential::UserKey(key) => {
                let digest = credentials::digest(key);
                self.cached_credential(format!("k:{digest}"), Principal::ApiKey { digest })
            }
            Credential::Session(cookie) => {
                let digest = credentials::digest(cookie);
                self.cached_credential(format!("s:{digest}"), Principal::Session { digest })
            }
            Credential::Jwt(token) => self.jwt_principal(token),
        }
    }

    pub(super) fn service_principal(&self, key: &str) -> Result<Principal, ApiError> {
        let snapshot = self
            .shared
            .borrow()
            .snapshot
            .clone()
            .ok_or_else(starting_up)?;
        let digest = credentials::digest(key);
        // Compare against every entry so timing does not reveal which one matched.
        let mut found = None;
        for entry in &snapshot.service_keys {
            if credentials::constant_time_eq(entry.digest.as_bytes(), digest.as_bytes()) {
                found = Some(entry.user_id.clone());
            }
        }
        found
            .map(|user_id| Principal::Service { user_id })
            .ok_or_else(|| ApiError::invalid_api_key("Invalid service key"))
    }

    /// A `uc_` key or session: refused locally when the control plane refused it lately,
    /// else passed on (the control plane decides).
    pub(super) fn cached_credential(&mut self, key: String, principal: Principal) -> Authn {
        let now = host::now();
        let shared = self.shared.clone();
        let mut s = shared.borrow_mut();
        match s.credentials.get(&key, now).cloned() {
            Some(CredentialState::Bad(err)) => {
                s.metrics.inc(Counter::CredentialCacheNegativeHit);
                return Authn::Refused(err);
            }
            Some(CredentialState::Good) => s.metrics.inc(Counter::CredentialCacheHit),
            None => s.metrics.inc(Counter::CredentialCacheMiss),
        }
        self.credential_key = Some(key);
        Authn::Ready(principal)
    }

    /// Remembers what authorize said about this request's `uc_` key or session.
    pub(super) fn remember_credential(&mut self, refusal: Option<&ApiError>) {
        let Some(key) = self.credential_key.take() else {
            return;
        };
        let now = host::now();
        let mut s = self.shared.borrow_mut();
        match refusal {
            Some(err) if err.kind == ErrorKind::InvalidApiKey => {
                let ttl = s.config.negative_cache_ttl;
                if ttl.is_zero() {
                    s.credentials.remove(&key);
                } else {
                    s.credentials
                        .insert(key, CredentialState::Bad(err.clone()), after(now, ttl));
                }
            }
            _ => {
                let ttl = s.config.credential_cache_ttl;
                s.credentials
                    .insert(key, CredentialState::Good, after(now, ttl));
            }
        }
    }

    /// Keeps the payload `jwt_authn` forwarded (if JWTs are configured), before every
    /// `x-opsgate-*` header is stripped from the request.
    pub(super) fn take_jwt_payload(&mut self) {
        let s = self.shared.borrow();
        if let Some(jwt) = s.config.jwt.as_ref() {
            self.jwt_payload = host::header(Headers::Request, &jwt.payload_header);
        }
    }

    /// A bearer that looks like a JWT: accepted when Envoy's `jwt_authn` verified it (its
    /// forwarded payload is this token's own) and its claims hold.
    pub(super) fn jwt_principal(&mut self, token: &str) -> Authn {
        let shared = self.shared.clone();
        let s = shared.borrow();
        let Some(jwt_config) = s.config.jwt.as_ref() else {
            return Authn::Refused(ApiError::invalid_api_key(
                "JWT authentication is not enabled on this gateway; use an API key.",
            ));
        };
        let now = unix_secs(host::now());
        match jwt::accept(
            token,
            self.jwt_payload.as_deref(),
            &jwt_config.validation,
            now,
        ) {
            Ok(claims) => {
                self.count(Counter::JwtVerified);
                self.jwt_expires_at = Some(claims.expires_at);
                Authn::Ready(Principal::Jwt {
                    subject: claims.subject,
                    email: claims.email,
                    roles: claims.roles,
                })
            }
            Err(e) => {
                self.count(Counter::JwtVerifyFailed);
                log(
                    LogLevel::Debug,
                    &format!("opsgate: JWT refused ({})", e.label()),
                );
                Authn::Refused(ApiError::invalid_api_key(e.message()))
            }
        }
    }

    /// A non-metered call verified by a JWT goes to the control plane with the identity
    /// headers.
    pub(super) fn add_identity(&self, principal: &Principal) {
        let Principal::Jwt {
            subject,
            email,
            roles,
        } = principal
        else {
            return;
        };
        let identity = Identity {
            subject: subject.clone(),
            email: email.clone(),
            roles: roles.clone(),
            expires_at: self.jwt_expires_at,
        };
        let auth = self.shared.borrow().config.identity_auth.clone();
        set_header(Headers::Request, IDENTITY_HEADER, &identity.encode());
        set_header(Headers::Request, IDENTITY_AUTH_HEADER, &auth);
        self.count(Counter::IdentityForwarded);
    }

    /// The cookie CSRF rule (see [`crate::cors`]): `Ok(Some(message))` when refused.
    pub(super) fn cookie_refusal(&self) -> Result<Option<String>, ApiError> {
        let origin = request_header(headers::ORIGIN)?;
        let site = request_header(headers::SEC_FETCH_SITE)?;
        let own = cors::own_origin(
            request_header(":scheme")?.as_deref(),
            request_header(":authority")?.as_deref(),
        );
        let s = self.shared.borrow();
        Ok(cors::cookie_refusal(
            s.config.cors.as_ref(),
            &BrowserContext {
                method: &self.method,
                origin: origin.as_deref(),
                sec_fetch_site: site.as_deref(),
                own_origin: own.as_deref(),
            },
        ))
    }
}

pub(super) fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
