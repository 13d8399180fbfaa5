//! The auth domain: register, login, refresh, logout, verify email, me, validate, revoke,
//! unlock — each as one method over the store, the guards (lockout, denylist), the password
//! hasher and the keys. gRPC decoding lives in `grpc.rs`.

use std::{sync::Arc, sync::OnceLock, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use portico_config::{AuthSettings, SecretString};
use portico_limiter::Clock;
use prometheus_client::metrics::counter::Counter;
use rand_core::RngCore as _;
use sha2::{Digest as _, Sha256};
use unicode_normalization::UnicodeNormalization as _;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

use crate::{
    keys::KeySet,
    lockout::{Attempt, Ceiling, Guards},
    mailer::EmailSender,
    passwords::{HashError, Passwords},
    store::{Issued, Store, UserRow},
    tokens::{self, Claims},
    Error,
};

/// Lifetime of an email verification token.
const VERIFICATION_TTL: Duration = Duration::from_secs(24 * 3600);
/// The one message for every failed login, whatever the reason.
pub(crate) const BAD_CREDENTIALS: &str = "invalid email or password";

fn login_failures() -> &'static Counter {
    static COUNTER: OnceLock<Counter> = OnceLock::new();
    COUNTER.get_or_init(|| {
        let counter = Counter::default();
        portico_telemetry::metrics::register(
            "login_failures",
            "Failed logins (bad credentials or lockout)",
            counter.clone(),
        );
        counter
    })
}

/// Who is calling, as the edge forwarded it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Client IP (`x-forwarded-for` from the edge, else the socket peer).
    pub ip: String,
    /// The request's correlation ID.
    pub correlation_id: String,
    /// `authorization: Bearer …`.
    pub bearer: Option<String>,
    /// `x-admin-key`.
    pub admin_key: Option<String>,
    /// The client's User-Agent as the edge forwarded it (`x-client-user-agent`).
    pub user_agent: Option<String>,
}

impl Caller {
    /// The network lockouts key on: the IP, or its /64 for IPv6 (`portico_limiter`'s rule).
    pub fn network(&self) -> String {
        self.ip
            .parse()
            .map_or_else(|_| self.ip.clone(), portico_limiter::client_network)
    }
}

/// Issued tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

/// The auth service's state.
#[derive(Clone)]
pub struct Accounts {
    pub(crate) store: Store,
    pub(crate) guards: Guards,
    pub(crate) passwords: Passwords,
    pub(crate) keys: Arc<KeySet>,
    pub(crate) settings: AuthSettings,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sender: Arc<dyn EmailSender>,
    pub(crate) admin_key: Option<SecretString>,
    /// `APP_ENV=production`: a sender that only logs never gets a reset token.
    pub(crate) production: bool,
    /// API keys for programs (see `api_keys`).
    pub(crate) api_keys: crate::api_keys::KeyStore,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("keys", &self.keys)
            .finish()
    }
}

/// Characters that render as nothing (zero-width spaces and joiners, bidi controls, soft
/// hyphens, variation selectors, Hangul fillers, …) or are control characters: refused in new
/// passwords, where they make two different strings look identical.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || c.general_category() == GeneralCategory::Format
        || matches!(c,
            '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}'
            | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FFA0}' | '\u{E0100}'..='\u{E01EF}')
}

/// NFKC: compatibility forms (full-width letters, ligatures, …) become their plain form, so
/// look-alike spellings of one password are one.
fn nfkc(text: &str) -> String {
    text.nfkc().collect()
}

/// The OpenAPI schema's pattern for an address (`RegisterRequest.email` in `auth.proto`, which
/// a suite test holds equal to this): printable ASCII, whitespace only around it, 1 to 64
/// characters before the `@`, a dot in the domain but not at either end. The service takes
/// exactly what it takes, in both directions: an address outside ASCII would need rules a
/// pattern cannot state (NFKC turns `¨` into a space and `\u{FF0E}` into a dot).
pub const EMAIL_PATTERN: &str =
    r"^[\t-\r ]*[!-?A-~]{1,64}@[!-\-/-~][!-~]{0,93}\.[!-~]{0,93}[!-\-/-~][\t-\r ]*$";

/// Trimmed and lower-cased, when it matches [`EMAIL_PATTERN`] as sent: the service takes
/// exactly what the schema takes, so a client that validates against the document is never
/// surprised, and nothing the document refuses is mended into an address. The pattern implies
/// the rest: at most 254 characters, no control, invisible or look-alike character, a local
/// part and a domain with a dot inside.
pub fn normalize_email(raw: &str) -> Result<String, Error> {
    static PATTERN: OnceLock<regex::Regex> = OnceLock::new();
    let pattern = PATTERN
        .get_or_init(|| regex::Regex::new(EMAIL_PATTERN).expect("the email pattern compiles"));
    if pattern.is_match(raw) {
        Ok(raw.trim().to_ascii_lowercase())
    } else {
        Err(Error::InvalidArgument(
            "email must be an ASCII address (name@example.com) of at most 254 characters".into(),
        ))
    }
}

/// A new password: 8 to 128 characters as sent (what the OpenAPI schema promises, so a client
/// that validates against it is never surprised), not only whitespace, no invisible characters;
/// then NFKC-normalised, as every password is before hashing. Normalisation can change the count
/// (`¯` becomes a space and a combining macron), which is why the rules apply to the input.
pub fn check_password(password: &str) -> Result<String, Error> {
    let length = password.chars().count();
    if !(8..=128).contains(&length) {
        return Err(Error::InvalidArgument(
            "password must be 8 to 128 characters".into(),
        ));
    }
    if password.chars().all(char::is_whitespace) {
        return Err(Error::InvalidArgument(
            "password must not be only whitespace".into(),
        ));
    }
    let normalised = nfkc(password);
    if password.chars().chain(normalised.chars()).any(is_invisible) {
        return Err(Error::InvalidArgument(
            "password must not contain invisible or control characters".into(),
        ));
    }
    Ok(normalised)
}

/// The pool's refusal as the service's error.
impl From<HashError> for Error {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Busy => Error::Overloaded,
            HashError::Failed(message) => Error::Internal(message),
        }
    }
}

pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// The key that seals a spent refresh token's successor pair: derived from the spent token
/// itself (with a label, so it is not the stored SHA-256), so only a holder of that token can
/// open it, and the database alone yields nothing.
fn grace_key(refresh_token: &str) -> Result<ring::aead::LessSafeKey, Error> {
    let mut hasher = Sha256::new();
    hasher.update(b"portico refresh grace v1\0");
    hasher.update(refresh_token.as_bytes());
    let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &hasher.finalize())
        .map_err(|_| Error::Internal("grace key".into()))?;
    Ok(ring::aead::LessSafeKey::new(key))
}

/// The successor pair, sealed (ChaCha20-Poly1305, random nonce) for the spent token.
fn seal(refresh_token: &str, tokens: &Tokens) -> Result<String, Error> {
    let key = grace_key(refresh_token)?;
    let mut nonce = [0u8; ring::aead::NONCE_LEN];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let mut data = serde_json::to_vec(&serde_json::json!({
        "a": tokens.access_token, "r": tokens.refresh_token, "e": tokens.expires_in,
    }))
    .map_err(|e| Error::Internal(e.to_string()))?;
    key.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::empty(),
        &mut data,
    )
    .map_err(|_| Error::Internal("seal".into()))?;
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&data);
    Ok(B64.encode(sealed))
}

/// Opens what [`seal`] sealed for `refresh_token`.
fn unseal(refresh_token: &str, sealed: &str) -> Option<Tokens> {
    let key = grace_key(refresh_token).ok()?;
    let bytes = B64.decode(sealed).ok()?;
    if bytes.len() < ring::aead::NONCE_LEN {
        return None;
    }
    let (nonce, data) = bytes.split_at(ring::aead::NONCE_LEN);
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = data.to_vec();
    let plain = key
        .open_in_place(nonce, ring::aead::Aad::empty(), &mut data)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(plain).ok()?;
    Some(Tokens {
        access_token: value["a"].as_str()?.to_owned(),
        refresh_token: value["r"].as_str()?.to_owned(),
        expires_in: value["e"].as_i64()?,
    })
}

pub(crate) fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Accounts {
    pub(crate) fn now_ms(&self) -> i64 {
        (self.clock.now_micros() / 1000) as i64
    }

    /// Whether `email` (normalised) is listed in `AUTH_ADMIN_EMAILS`.
    fn is_admin_email(&self, email: &str) -> bool {
        self.settings
            .admin_emails
            .iter()
            .any(|listed| normalize_email(listed).is_ok_and(|listed| listed == email))
    }

    /// Grants `admin` to a verified account listed in `AUTH_ADMIN_EMAILS` (never to an
    /// unverified one: anyone can register any address).
    async fn promote_if_listed(&self, user: &mut UserRow, caller: &Caller) -> Result<(), Error> {
        if user.email_verified && user.role != "admin" && self.is_admin_email(&user.email) {
            self.store
                .set_role(&user.id, "admin", self.now_ms())
                .await?;
            user.role = "admin".into();
            self.audit(
                "ROLE_GRANTED",
                Some(&user.id),
                Some(&user.email),
                caller,
                Some("admin (AUTH_ADMIN_EMAILS, verified)"),
            )
            .await;
        }
        Ok(())
    }

    /// The account ceiling's settings.
    fn ceiling(&self) -> Ceiling {
        Ceiling {
            threshold: i64::from(self.settings.account_max_failures),
            cap_ms: self.settings.account_backoff_max.as_millis() as i64,
        }
    }

    pub(crate) async fn audit(
        &self,
        event: &str,
        user_id: Option<&str>,
        email: Option<&str>,
        caller: &Caller,
        detail: Option<&str>,
    ) {
        tracing::info!(
            target: "audit",
            eventType = event,
            userId = user_id.unwrap_or_default(),
            email = email.unwrap_or_default(),
            ip = %caller.ip,
            correlationId = %caller.correlation_id,
            detail = detail.unwrap_or_default(),
            "audit"
        );
        let ip = (!caller.ip.is_empty()).then_some(caller.ip.as_str());
        let correlation =
            (!caller.correlation_id.is_empty()).then_some(caller.correlation_id.as_str());
        if let Err(error) = self
            .store
            .audit(
                event,
                user_id,
                email,
                ip,
                correlation,
                detail,
                self.now_ms(),
            )
            .await
        {
            tracing::error!(%error, event, "audit event not stored");
        }
    }

    /// Creates an account. Returns (user id, verification required).
    pub async fn register(
        &self,
        email: &str,
        password: String,
        caller: &Caller,
    ) -> Result<(String, bool), Error> {
        // Both checked before either is refused, so a caller hears of every bad field at once.
        let (email, password) = match (normalize_email(email), check_password(&password)) {
            (Ok(email), Ok(password)) => (email, password),
            (email, password) => {
                let violations = [("email", email.err()), ("password", password.err())]
                    .into_iter()
                    .filter_map(|(field, error)| Some((field.to_owned(), error?.to_string())))
                    .collect();
                return Err(Error::InvalidFields(violations));
            }
        };
        let hash = self.passwords.hash(password).await?;
        let now = self.now_ms();
        // Never `admin` here, even for a listed address: it is only a claim until verified.
        let user = UserRow {
            id: uuid::Uuid::now_v7().to_string(),
            email: email.clone(),
            password_hash: hash,
            role: "user".into(),
            email_verified: false,
            created_at: now,
        };
        let verification = self.settings.email_verification_required;
        match self.store.insert_user(&user).await {
            Ok(()) => {}
            Err(error)
                if matches!(
                    error.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) =>
            {
                if verification {
                    // Same answer as a new account: whether an email is registered stays secret.
                    return Ok((String::new(), true));
                }
                return Err(Error::AlreadyExists(
                    "an account with this email already exists".into(),
                ));
            }
            Err(error) => return Err(error.into()),
        }
        self.audit(
            "USER_REGISTERED",
            Some(&user.id),
            Some(&email),
            caller,
            None,
        )
        .await;
        if verification {
            let token = random_token();
            let expires = now + VERIFICATION_TTL.as_millis() as i64;
            self.store
                .insert_verification(&digest(&token), &user.id, expires)
                .await?;
            self.sender.send_verification(&email, &token);
            return Ok((String::new(), true));
        }
        Ok((user.id, false))
    }

    /// Email + password → tokens, under the lockout rules.
    pub async fn login(
        &self,
        email: &str,
        password: String,
        caller: &Caller,
    ) -> Result<Tokens, Error> {
        let email = normalize_email(email)?;
        let (mut user, password, needs_rehash) = self
            .check_credentials(&email, password, caller, None)
            .await?;
        let now = self.now_ms();
        if self.settings.email_verification_required && !user.email_verified {
            return Err(Error::FailedPrecondition(
                "verify your email address before logging in".into(),
            ));
        }
        // AUTH_ADMIN_EMAILS may list an address after it was verified.
        self.promote_if_listed(&mut user, caller).await?;
        if needs_rehash {
            // Stored from before passwords were normalised, or at weaker parameters.
            match self.passwords.hash(password).await {
                Ok(hash) => self.store.set_password_hash(&user.id, &hash, now).await?,
                Err(error) => tracing::warn!(%error, "rehash failed; keeping the old hash"),
            }
        }
        let tokens = self
            .issue(&user, &uuid::Uuid::now_v7().to_string(), caller)
            .await?;
        self.audit("LOGIN_SUCCESS", Some(&user.id), Some(&email), caller, None)
            .await;
        Ok(tokens)
    }

    /// Checks `password` for the account with `email` (normalised) under the lockout rules,
    /// as a login does: every failure counts against the email + network and the account.
    /// Returns the account, the NFKC password and whether its stored hash should be upgraded;
    /// `Unauthenticated(BAD_CREDENTIALS)` for any bad credential. `purpose` is the audit detail
    /// of a failure that is not a login (re-authentication).
    pub(crate) async fn check_credentials(
        &self,
        email: &str,
        password: String,
        caller: &Caller,
        purpose: Option<&str>,
    ) -> Result<(UserRow, String, bool), Error> {
        let email = email.to_owned();
        if password.is_empty() || password.chars().count() > 128 {
            return Err(Error::InvalidArgument(
                "password must be 1 to 128 characters".into(),
            ));
        }
        let raw = password;
        let password = nfkc(&raw);
        let now = self.now_ms();
        let window = self.settings.login_attempt_window.as_millis() as i64;
        let max = i64::from(self.settings.login_max_attempts);
        let network = caller.network();
        let attempt = self
            .guards
            .reserve(&email, &network, max, now, window, &self.ceiling())
            .await
            .map_err(Error::LockoutStore)?;
        let (number, counted) = match attempt {
            Attempt::Allowed(n, counted) => (n, counted),
            Attempt::Refused { until_ms } => {
                login_failures().inc();
                self.audit(
                    "LOGIN_FAILURE",
                    None,
                    Some(&email),
                    caller,
                    Some(
                        purpose
                            .map_or("locked out".to_owned(), |p| format!("{p}: locked out"))
                            .as_str(),
                    ),
                )
                .await;
                return Err(Error::LockedOut(
                    ((until_ms - now).max(0) as u64).div_ceil(1000).max(1),
                ));
            }
        };
        let checked = async {
            let user = self.store.user_by_email(&email).await?;
            let stored = user.as_ref().map(|u| u.password_hash.clone());
            let mut verified = self
                .passwords
                .verify(password.clone(), stored.clone())
                .await?;
            if !verified.ok && raw != password && stored.is_some() {
                // Set before passwords were normalised: accept it once more, then rehash. The
                // first check did run: if this one cannot, the attempt stays a failed one
                // (releasing it would hand out free guesses while the hash queue is full).
                verified = match self.passwords.verify(raw, stored).await {
                    Ok(again) => again,
                    Err(_) => verified,
                };
                verified.needs_rehash |= verified.ok;
            }
            Ok::<_, Error>((user, verified))
        }
        .await;
        let (user, verified) = match checked {
            Ok(checked) => checked,
            Err(error) => {
                // Not checked (the account store or the hash pool failed): the attempt must
                // not count against the owner, or an outage would lock out the right password.
                if let Err(release) = self.guards.release(&email, &network, counted).await {
                    tracing::warn!(error = %release, "login attempt not released");
                }
                return Err(error);
            }
        };
        let Some(user) = user.filter(|_| verified.ok) else {
            login_failures().inc();
            self.audit("LOGIN_FAILURE", None, Some(&email), caller, purpose)
                .await;
            if number >= max {
                let until = now + self.settings.login_lockout.as_millis() as i64;
                self.guards
                    .lock(&email, &network, now, until)
                    .await
                    .map_err(Error::LockoutStore)?;
                self.audit("ACCOUNT_LOCKED", None, Some(&email), caller, None)
                    .await;
            }
            return Err(Error::Unauthenticated(BAD_CREDENTIALS.into()));
        };
        self.guards
            .succeeded(&email, &network, now)
            .await
            .map_err(Error::LockoutStore)?;
        Ok((user, password, verified.needs_rehash))
    }

    /// Signs a new pair for `user` in `family_id` and records it (its refresh token's hash,
    /// its access token's `jti` and expiry, the caller's IP and user agent).
    async fn issue(
        &self,
        user: &UserRow,
        family_id: &str,
        caller: &Caller,
    ) -> Result<Tokens, Error> {
        Ok(self.mint(user, family_id, caller).await?.0)
    }

    /// [`Accounts::issue`], also returning the refresh token's hash.
    async fn mint(
        &self,
        user: &UserRow,
        family_id: &str,
        caller: &Caller,
    ) -> Result<(Tokens, String), Error> {
        let now = self.now_ms();
        let now_s = (now / 1000) as u64;
        let ttl = self.settings.access_ttl.as_secs();
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: user.id.clone(),
            role: user.role.clone(),
            jti: uuid::Uuid::now_v7().to_string(),
            iat: now_s,
            nbf: now_s,
            exp: now_s + ttl,
        };
        let access_token = tokens::sign(&self.keys, &claims).map_err(Error::Internal)?;
        let refresh_token = random_token();
        let hash = digest(&refresh_token);
        let expires = now + self.settings.refresh_ttl.as_millis() as i64;
        let issued = Issued {
            access_jti: &claims.jti,
            access_expires_at: (claims.exp as i64) * 1000,
            ip: (!caller.ip.is_empty()).then_some(caller.ip.as_str()),
            user_agent: caller.user_agent.as_deref(),
        };
        self.store
            .insert_refresh(&hash, family_id, &user.id, expires, now, &issued)
            .await?;
        Ok((
            Tokens {
                access_token,
                refresh_token,
                expires_in: ttl as i64,
            },
            hash,
        ))
    }

    /// Spends a refresh token for a new pair. A spent one presented again within
    /// `AUTH_REFRESH_GRACE` returns the same successor pair; after it, reuse revokes the family
    /// (and denylists its live access tokens).
    ///
    /// The successor is minted *before* the spend, and the spend (one conditional `UPDATE`:
    /// one winner) stores it sealed with a key only the presented token derives; so a caller
    /// that sees the token spent also sees its successor, and concurrent refreshes of one
    /// token still mint exactly one pair (a loser deletes the row it minted, which no one saw).
    pub async fn refresh(&self, refresh_token: &str, caller: &Caller) -> Result<Tokens, Error> {
        if refresh_token.is_empty() || refresh_token.chars().count() > 256 {
            return Err(Error::InvalidArgument("refreshToken is required".into()));
        }
        let hash = digest(refresh_token);
        let now = self.now_ms();
        let invalid =
            || Error::Unauthenticated("refresh token is invalid, expired or revoked".into());
        let Some(mut row) = self.store.refresh_by_hash(&hash).await? else {
            return Err(invalid());
        };
        if row.spent_at.is_none() && !row.family_revoked && row.expires_at > now {
            let user = self
                .store
                .user_by_id(&row.user_id)
                .await?
                .ok_or_else(invalid)?;
            let (tokens, successor_hash) = self.mint(&user, &row.family_id, caller).await?;
            let sealed = (!self.settings.refresh_grace.is_zero())
                .then(|| seal(refresh_token, &tokens))
                .transpose()?;
            if self
                .store
                .spend_refresh(&hash, now, sealed.as_deref())
                .await?
            {
                return Ok(tokens);
            }
            // Another refresh of the same token won: this pair was never handed out.
            self.store.delete_refresh(&successor_hash).await?;
            row = self
                .store
                .refresh_by_hash(&hash)
                .await?
                .ok_or_else(invalid)?;
        }
        let Some(spent_at) = row.spent_at else {
            return Err(invalid());
        };
        if row.family_revoked || row.expires_at <= now {
            return Err(invalid());
        }
        let grace = self.settings.refresh_grace.as_millis() as i64;
        if grace > 0 && now - spent_at <= grace {
            if let Some(tokens) = row
                .successor
                .as_deref()
                .and_then(|sealed| unseal(refresh_token, sealed))
            {
                return Ok(tokens);
            }
        }
        self.store.revoke_family(&row.family_id, now).await?;
        self.deny_live(&row.user_id, now, Some(&row.family_id), None)
            .await?;
        self.audit(
            "REFRESH_TOKEN_REUSE",
            Some(&row.user_id),
            None,
            caller,
            Some(&format!("family {}", row.family_id)),
        )
        .await;
        Err(Error::Unauthenticated(
            "refresh token was already used; every session of this login is revoked".into(),
        ))
    }

    /// Denylists every live access token of `user_id` (of one family, or of all but one)
    /// until it expires.
    pub(crate) async fn deny_live(
        &self,
        user_id: &str,
        now: i64,
        only: Option<&str>,
        except: Option<&str>,
    ) -> Result<(), Error> {
        for (jti, expires_at) in self.store.live_access(user_id, now, only, except).await? {
            self.guards
                .deny(&jti, now, expires_at)
                .await
                .map_err(Error::LockoutStore)?;
        }
        Ok(())
    }

    /// Revokes every session of `user_id` but `except`, then denylists their live access
    /// tokens (after the revocation, so a pair minted meanwhile is caught too). Returns the
    /// number of sessions revoked.
    pub(crate) async fn end_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<u32, Error> {
        let now = self.now_ms();
        let revoked = self.store.revoke_user(user_id, now, except).await?;
        self.deny_live(user_id, now, None, except).await?;
        Ok(revoked)
    }

    /// Revokes the refresh token's family and denylists the caller's access token.
    pub async fn logout(&self, refresh_token: &str, caller: &Caller) -> Result<(), Error> {
        if refresh_token.is_empty() || refresh_token.chars().count() > 256 {
            return Err(Error::InvalidArgument("refreshToken is required".into()));
        }
        let now = self.now_ms();
        let row = self.store.refresh_by_hash(&digest(refresh_token)).await?;
        let Some(row) = row else {
            return Err(Error::Unauthenticated("refresh token is invalid".into()));
        };
        self.store.revoke_family(&row.family_id, now).await?;
        if let Some(claims) = caller
            .bearer
            .as_deref()
            .and_then(|token| self.verify_signature(token).ok())
        {
            self.guards
                .deny(&claims.jti, now, (claims.exp as i64) * 1000)
                .await
                .map_err(Error::LockoutStore)?;
        }
        self.audit(
            "TOKEN_REVOKED",
            Some(&row.user_id),
            None,
            caller,
            Some("logout"),
        )
        .await;
        Ok(())
    }

    /// Consumes a verification token.
    pub async fn verify_email(&self, token: &str, caller: &Caller) -> Result<String, Error> {
        if token.is_empty() || token.chars().count() > 256 {
            return Err(Error::InvalidArgument("token is required".into()));
        }
        let now = self.now_ms();
        let user_id = self
            .store
            .use_verification(&digest(token), now)
            .await?
            .ok_or_else(|| {
                Error::InvalidArgument("verification token is invalid, used or expired".into())
            })?;
        self.store.set_verified(&user_id, now).await?;
        self.audit("EMAIL_VERIFIED", Some(&user_id), None, caller, None)
            .await;
        if let Some(mut user) = self.store.user_by_id(&user_id).await? {
            self.promote_if_listed(&mut user, caller).await?;
        }
        Ok(user_id)
    }

    pub(crate) fn verify_signature(&self, token: &str) -> Result<Claims, tokens::Refused> {
        tokens::verify(
            &self.keys,
            token,
            &self.settings.issuer,
            &self.settings.audience,
        )
    }

    /// Signature, claims and denylist.
    pub async fn validate(&self, token: &str) -> Result<Claims, tokens::Refused> {
        let claims = self.verify_signature(token)?;
        match self.guards.is_denied(&claims.jti, self.now_ms()).await {
            Ok(false) => Ok(claims),
            Ok(true) => Err(tokens::Refused("token has been revoked".into())),
            Err(error) => Err(tokens::Refused(format!(
                "revocation list unavailable: {error}"
            ))),
        }
    }

    /// The caller's claims, from its bearer token. An API key is refused here: what needs
    /// claims (sessions, passwords, the account itself) is for people who logged in.
    pub async fn authenticate(&self, caller: &Caller) -> Result<Claims, Error> {
        let token = caller
            .bearer
            .as_deref()
            .ok_or_else(|| Error::Unauthenticated("a bearer token is required".into()))?;
        if token.starts_with(crate::api_keys::KEY_PREFIX) {
            return Err(Error::PermissionDenied(
                "API keys cannot manage accounts or sessions; log in with a password".into(),
            ));
        }
        self.validate(token).await.map_err(|refused| {
            tracing::info!(reason = %refused.0, "bearer token refused");
            Error::Unauthenticated("the bearer token is invalid, expired or revoked".into())
        })
    }

    /// The caller's account.
    pub async fn me(&self, caller: &Caller) -> Result<UserRow, Error> {
        let user_id = match self.caller_api_key(caller).await? {
            Some((key, _)) => key.user_id,
            None => self.authenticate(caller).await?.sub,
        };
        self.store
            .user_by_id(&user_id)
            .await?
            .ok_or_else(|| Error::Unauthenticated("the account no longer exists".into()))
    }

    /// Admin: `x-admin-key` equal to `ADMIN_API_KEY`, or an admin bearer token.
    pub async fn require_admin(&self, caller: &Caller) -> Result<(), Error> {
        if let Some(given) = &caller.admin_key {
            let valid = self
                .admin_key
                .as_ref()
                .is_some_and(|expected| portico_config::secret_matches(given.as_bytes(), expected));
            return if valid {
                Ok(())
            } else {
                Err(Error::PermissionDenied("x-admin-key is not valid".into()))
            };
        }
        // An API key is admin only with the `admin` scope and an owner who is admin now.
        let admin = match self.caller_api_key(caller).await? {
            Some((key, role)) => role == "admin" && key.scopes.iter().any(|s| s == "admin"),
            None => self.authenticate(caller).await?.role == "admin",
        };
        if admin {
            Ok(())
        } else {
            Err(Error::PermissionDenied("admin role required".into()))
        }
    }

    /// Admin: revoke one access token, or every session of a user.
    pub async fn revoke_jti(&self, jti: &str, caller: &Caller) -> Result<(), Error> {
        self.require_admin(caller).await?;
        if jti.is_empty() || jti.chars().count() > 64 {
            return Err(Error::InvalidArgument(
                "jti must be 1 to 64 characters".into(),
            ));
        }
        let now = self.now_ms();
        // An access token lives at most JWT_ACCESS_TTL: deny it that long.
        let until = now + self.settings.access_ttl.as_millis() as i64;
        self.guards
            .deny(jti, now, until)
            .await
            .map_err(Error::LockoutStore)?;
        self.audit(
            "TOKEN_REVOKED",
            None,
            None,
            caller,
            Some(&format!("jti {jti}")),
        )
        .await;
        Ok(())
    }

    /// Admin: revoke every refresh family of `user_id`.
    pub async fn revoke_user(&self, user_id: &str, caller: &Caller) -> Result<u32, Error> {
        self.require_admin(caller).await?;
        if user_id.is_empty() || user_id.chars().count() > 36 {
            return Err(Error::InvalidArgument(
                "userId must be an account id".into(),
            ));
        }
        let families = self.end_sessions(user_id, None).await?;
        self.audit(
            "TOKEN_REVOKED",
            Some(user_id),
            None,
            caller,
            Some(&format!("{families} families")),
        )
        .await;
        Ok(families)
    }

    /// Admin: clear lockouts of `email` (one IP or all).
    pub async fn unlock(
        &self,
        email: &str,
        ip: Option<&str>,
        caller: &Caller,
    ) -> Result<u32, Error> {
        self.require_admin(caller).await?;
        let email = normalize_email(email)?;
        let network = match ip {
            Some(ip) => Some(portico_limiter::client_network(ip.parse().map_err(
                |_| Error::InvalidArgument(format!("ip `{ip}` is not an IP address")),
            )?)),
            None => None,
        };
        let cleared = self
            .guards
            .unlock(&email, network.as_deref())
            .await
            .map_err(Error::LockoutStore)?;
        tracing::info!(email, ip, cleared, "account unlocked");
        Ok(cleared)
    }

    /// Admin: the lockouts in force (of `email`, or of every email when empty), the latest to
    /// end first, at most `limit` (0 = [`DEFAULT_LOCKOUT_LIST`]); with the time they were read
    /// at (ms), so remaining times agree with the lockout's own clock.
    pub async fn lockouts(
        &self,
        email: &str,
        limit: u32,
        caller: &Caller,
    ) -> Result<(Vec<crate::lockout::Lockout>, bool, i64), Error> {
        self.require_admin(caller).await?;
        // Only ASCII whitespace counts as none, as the schema's pattern says.
        let email = match email.trim_matches(|c| matches!(c, '\t'..='\r' | ' ')) {
            "" => None,
            given => Some(normalize_email(given)?),
        };
        let limit = match limit {
            0 => DEFAULT_LOCKOUT_LIST,
            n if n <= MAX_LOCKOUT_LIST => n,
            n => {
                return Err(Error::InvalidArgument(format!(
                    "limit {n} is too large: at most {MAX_LOCKOUT_LIST}"
                )))
            }
        };
        let now = self.now_ms();
        let (lockouts, truncated) = self
            .guards
            .lockouts(email.as_deref(), now, limit as usize)
            .await
            .map_err(Error::LockoutStore)?;
        Ok((lockouts, truncated, now))
    }
}

/// Lockouts listed when the caller gives no limit.
pub const DEFAULT_LOCKOUT_LIST: u32 = 100;
/// Most lockouts one listing returns.
pub const MAX_LOCKOUT_LIST: u32 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").ok().as_deref(),
            Some("alice@example.com")
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a b@example.com",
            "alice@example",
            &format!("{}@example.com", "a".repeat(250)),
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        // What the schema's pattern refuses is refused as sent, even where normalisation would
        // make an address of it: a full-width full stop as the domain's only dot; a domain
        // longer than the pattern's (93 characters on either side of a dot).
        for bad in [
            "alice@example\u{FF0E}com".to_owned(),
            format!("alice@{}.com", "b".repeat(100)),
        ] {
            assert!(normalize_email(&bad).is_err(), "{bad:?}");
        }
        // Nor does the service take an address outside ASCII, which the pattern refuses.
        assert!(normalize_email("jos\u{E9}@example.com").is_err());
    }

    #[test]
    fn look_alike_and_invisible_characters_are_refused() {
        // A full-width spelling is not an address (it would be the plain one after NFKC).
        assert!(normalize_email("\u{FF41}lice@example.com").is_err());
        for invisible in [
            '\u{200B}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00AD}', '\u{202E}',
        ] {
            let email = format!("ali{invisible}ce@example.com");
            assert!(normalize_email(&email).is_err(), "{email:?}");
        }
    }

    #[test]
    fn whitespace_only_and_invisible_passwords_are_refused() {
        assert!(check_password("        ").is_err(), "eight spaces");
        assert!(
            check_password("\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}")
                .is_err()
        );
        assert!(check_password("correct\u{200B}horse").is_err());
        assert!(
            check_password("correct horse").is_ok(),
            "inner spaces are fine"
        );
        assert_eq!(
            check_password("\u{FF43}orrect horse").ok().as_deref(),
            Some("correct horse"),
            "normalised before hashing"
        );
    }

    #[test]
    fn passwords_are_8_to_128_characters() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(
            check_password(&"é".repeat(128)).is_ok(),
            "characters, not bytes"
        );
        assert!(check_password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn the_length_is_counted_as_sent_not_after_normalisation() {
        // Seven characters that NFKC makes eight (the macron becomes a space and U+0304): the
        // schema refuses them, so the service does too (schemathesis found the difference).
        let sent = "\u{113} \u{C4}\u{111};\u{115}\u{AF}";
        assert_eq!(sent.chars().count(), 7);
        assert_eq!(nfkc(sent).chars().count(), 8);
        assert!(check_password(sent).is_err());
        // Eight as sent, four once composed: accepted, as the schema says.
        assert_eq!(
            check_password(&"e\u{301}".repeat(4)).ok().as_deref(),
            Some("\u{E9}\u{E9}\u{E9}\u{E9}")
        );
    }
}
