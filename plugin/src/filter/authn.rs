//! Who is calling: service keys against the snapshot, `uc_` keys and sessions through the
//! credential cache (authorize decides), JWTs against the JWKS with a verified-token cache,
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

    pub(super) fn jwt_principal(&mut self, token: &str) -> Authn {
        if self.shared.borrow().config.jwt.is_none() {
            return Authn::Refused(ApiError::invalid_api_key(
                "JWT authentication is not enabled on this gateway; use an API key.",
            ));
        }
        let now = host::now();
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // A cached verdict needs nothing else; only first sight reads the JWT settings.
        let (jwt, keys) = {
            let shared = self.shared.clone();
            let mut s = shared.borrow_mut();
            match s.tokens.get(&hash, now).cloned() {
                Some(TokenState::Verified(p)) => {
                    s.metrics.inc(Counter::JwtCacheHit);
                    return Authn::Ready(p);
                }
                Some(TokenState::Refused(err)) => {
                    s.metrics.inc(Counter::CredentialCacheNegativeHit);
                    return Authn::Refused(err);
                }
                None => {}
            }
            (s.config.jwt.clone(), s.jwks.keys.clone())
        };
        let Some(jwt) = jwt else {
            return Authn::Refused(ApiError::invalid_api_key(
                "JWT authentication is not enabled on this gateway; use an API key.",
            ));
        };
        let Some(keys) = keys else {
            return Authn::Refused(ApiError::new(
                ErrorKind::Unavailable,
                "The gateway has not loaded its identity provider's keys yet; retry in a moment.",
            ));
        };
        let result = jwt::verify(token, &keys, &jwt.validation, unix_secs(now));
        if let Err(JwtError::UnknownKid(_)) = &result {
            if jwks::claim_unknown_kid_refetch(&self.shared, now) {
                match jwks::dispatch(&jwt) {
                    Ok(call) => {
                        self.pending_jwt = Some(token.to_string());
                        return Authn::AwaitingKeys(call);
                    }
                    Err(e) => log(
                        LogLevel::Warn,
                        &format!(
                            "opsgate: JWKS refetch not sent to cluster {}: {e:?}",
                            jwt.jwks_cluster
                        ),
                    ),
                }
            }
            // No refetch now: refused, but not remembered (the keys may change).
            return self.jwt_outcome(&hash, result, now, false);
        }
        self.jwt_outcome(&hash, result, now, true)
    }

    /// Counts and caches a verification result.
    pub(super) fn jwt_outcome(
        &mut self,
        hash: &[u8; 32],
        result: Result<jwt::Claims, JwtError>,
        now: SystemTime,
        remember_refusal: bool,
    ) -> Authn {
        let mut s = self.shared.borrow_mut();
        match result {
            Ok(claims) => {
                s.metrics.inc(Counter::JwtVerified);
                // Cached until `exp`, and never longer than MAX_TOKEN_CACHE (a token may
                // claim any `exp`; the arithmetic must not overflow either).
                let exp =
                    UNIX_EPOCH.checked_add(Duration::from_secs(claims.expires_at.max(0) as u64));
                let cap = now.checked_add(MAX_TOKEN_CACHE);
                let expires = match (exp, cap) {
                    (Some(e), Some(c)) => Some(e.min(c)),
                    (e, c) => e.or(c),
                };
                let principal = Principal::Jwt {
                    subject: claims.subject,
                    email: claims.email,
                    roles: claims.roles,
                };
                if let Some(expires) = expires.filter(|e| *e > now) {
                    s.tokens
                        .insert(*hash, TokenState::Verified(principal.clone()), expires);
                }
                Authn::Ready(principal)
            }
            Err(e) => {
                s.metrics.inc(Counter::JwtVerifyFailed);
                log(
                    LogLevel::Debug,
                    &format!("opsgate: JWT refused ({})", e.label()),
                );
                let err = ApiError::invalid_api_key(e.message());
                let ttl = s.config.negative_cache_ttl;
                if remember_refusal && !ttl.is_zero() {
                    s.tokens
                        .insert(*hash, TokenState::Refused(err.clone()), after(now, ttl));
                }
                Authn::Refused(err)
            }
        }
    }

    /// The JWKS refetch this request waited for has answered (or failed): verify again with
    /// whatever keys there are now, then go on.
    pub(super) fn keys_arrived(&mut self) {
        let now = host::now();
        let Some(token) = self.pending_jwt.take() else {
            self.reply(&ApiError::new(ErrorKind::Internal, "Internal error."));
            return;
        };
        let (jwt, keys) = {
            let s = self.shared.borrow();
            (s.config.jwt.clone(), s.jwks.keys.clone())
        };
        let (Some(jwt), Some(keys)) = (jwt, keys) else {
            self.reply(&ApiError::new(
                ErrorKind::Unavailable,
                "The gateway could not load its identity provider's keys; retry in a moment.",
            ));
            return;
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let result = jwt::verify(&token, &keys, &jwt.validation, unix_secs(now));
        match self.jwt_outcome(&hash, result, now, true) {
            Authn::Ready(p) => {
                if self.proceed(p) == Action::Continue {
                    resume_request();
                }
            }
            Authn::Refused(e) => self.reply(&e),
            Authn::AwaitingKeys(_) => {}
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

/// The longest a verified token is cached, whatever its `exp`.
const MAX_TOKEN_CACHE: Duration = Duration::from_secs(3600);

pub(super) fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
