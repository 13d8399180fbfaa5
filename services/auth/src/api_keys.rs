//! API keys for programs (issue 14): `pk_` + 256 random bits, shown once and stored only as a
//! keyed hash (HMAC-SHA256 under `AUTH_API_KEY_SECRET`, else SHA-256). A fast hash is right for
//! a secret with 256 bits of entropy that is checked on every request: nobody can guess it, so
//! the slowness Argon2 adds for passwords would only cost every call. A key carries scopes
//! (`chat`, `content:write`, `admin`) that never exceed its owner's rights — checked when it is
//! created and, with the owner's *current* role, every time it is verified.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use portico_config::{ExposeSecret as _, SecretString};
use portico_migrations::Db;
use rand_core::RngCore as _;
use sea_orm::{DbErr, QueryResult, Value};

use crate::{
    accounts::{digest, normalize_email, Accounts, Caller},
    store::UserRow,
    Error,
};

/// Every key starts with this.
pub(crate) const KEY_PREFIX: &str = portico_tokens::API_KEY_PREFIX;
/// Random bytes in a key (256 bits).
const KEY_BYTES: usize = 32;
/// The scopes a key may carry.
pub(crate) const SCOPES: [&str; 3] = ["chat", "content:write", "admin"];
/// Scopes only an admin's key may carry.
const ADMIN_SCOPES: [&str; 2] = ["content:write", "admin"];
/// Most live keys one account may hold.
const MAX_LIVE_KEYS: u64 = 100;
/// Longest key name.
const MAX_NAME_CHARS: usize = 100;
/// Shortest and longest lifetime of a key (60 s to 10 years).
const EXPIRES_IN_SECONDS: std::ops::RangeInclusive<u64> = 60..=10 * 366 * 86_400;
/// Budget window when a budget is given without one: a UTC day.
const DEFAULT_BUDGET_WINDOW_SECONDS: u64 = 86_400;
/// Budget windows a key may use: one minute to 31 days.
const BUDGET_WINDOW_SECONDS: std::ops::RangeInclusive<u64> = 60..=31 * 86_400;
/// Largest budget and request rate a key may carry.
const MAX_TOKEN_BUDGET: u64 = 1_000_000_000_000;
const MAX_REQUESTS_PER_MINUTE: u32 = 1_000_000;
/// `last_used_at` is written at most this often per key (verification is hot; the column is
/// for people).
const LAST_USED_RESOLUTION_MS: i64 = 60_000;
/// Characters of the secret kept in the clear to recognise a key (`pk_` + 6): 36 bits of
/// the 256, so what remains unknown is still 220 bits.
const SHOWN_PREFIX_CHARS: usize = KEY_PREFIX.len() + 6;

/// A key's row.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub requests_per_minute: Option<u32>,
    pub token_budget: Option<u64>,
    pub budget_window_seconds: Option<u64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub created_at: i64,
}

impl KeyRow {
    fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "admin")
    }
}

/// What a new key is asked to be.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub user: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_in_seconds: Option<u64>,
    pub requests_per_minute: Option<u32>,
    pub token_budget: Option<u64>,
    pub budget_window_seconds: Option<u64>,
}

/// Who manages keys in a call.
enum Manager {
    /// `X-Admin-Key`.
    AdminKey,
    /// A person (JWT) or a program (an API key with the `admin` scope), with their role now.
    Account { user_id: String, admin: bool },
}

impl Manager {
    fn is_admin(&self) -> bool {
        match self {
            Manager::AdminKey => true,
            Manager::Account { admin, .. } => *admin,
        }
    }
}

/// The `api_keys` table.
#[derive(Clone)]
pub struct KeyStore {
    db: Db,
    /// `AUTH_API_KEY_SECRET`: the HMAC key of stored hashes, when set.
    secret: Option<SecretString>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keyed", &self.secret.is_some())
            .finish()
    }
}

const KEY_COLUMNS: &str = "k.id, k.user_id, k.name, k.prefix, k.scopes, k.requests_per_minute, \
    k.token_budget, k.budget_window_seconds, k.expires_at, k.revoked_at, k.last_used_at, k.created_at";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyStore {
    pub fn new(db: Db, secret: Option<SecretString>) -> Self {
        Self { db, secret }
    }

    /// The hash a new key is stored under: HMAC-SHA256 when a secret is configured.
    fn hash(&self, key: &str) -> String {
        match &self.secret {
            Some(secret) => {
                let mac = ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    secret.expose_secret().as_bytes(),
                );
                hex(ring::hmac::sign(&mac, key.as_bytes()).as_ref())
            }
            None => digest(key),
        }
    }

    /// Every hash `key` may be stored under: the HMAC and, so that keys created before
    /// `AUTH_API_KEY_SECRET` was set keep working, the plain SHA-256.
    fn candidates(&self, key: &str) -> [String; 2] {
        [self.hash(key), digest(key)]
    }

    fn row(row: &QueryResult) -> Result<KeyRow, DbErr> {
        let scopes: String = row.try_get("", "scopes")?;
        let positive = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0);
        Ok(KeyRow {
            id: row.try_get("", "id")?,
            user_id: row.try_get("", "user_id")?,
            name: row.try_get("", "name")?,
            prefix: row.try_get("", "prefix")?,
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            requests_per_minute: row
                .try_get::<Option<i32>>("", "requests_per_minute")?
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0),
            token_budget: positive(row.try_get("", "token_budget")?),
            budget_window_seconds: positive(row.try_get("", "budget_window_seconds")?),
            expires_at: row.try_get("", "expires_at")?,
            revoked_at: row.try_get("", "revoked_at")?,
            last_used_at: row.try_get("", "last_used_at")?,
            created_at: row.try_get("", "created_at")?,
        })
    }

    async fn insert(&self, row: &KeyRow, key_hash: &str) -> Result<(), DbErr> {
        let optional = |v: Option<u64>| Value::BigInt(v.and_then(|v| i64::try_from(v).ok()));
        self.db
            .execute(
                "INSERT INTO api_keys (id, user_id, name, key_hash, prefix, scopes, requests_per_minute, \
                 token_budget, budget_window_seconds, expires_at, revoked_at, last_used_at, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                vec![
                    row.id.clone().into(),
                    row.user_id.clone().into(),
                    row.name.clone().into(),
                    key_hash.into(),
                    row.prefix.clone().into(),
                    row.scopes.join(" ").into(),
                    Value::Int(row.requests_per_minute.and_then(|v| i32::try_from(v).ok())),
                    optional(row.token_budget),
                    optional(row.budget_window_seconds),
                    Value::BigInt(row.expires_at),
                    row.created_at.into(),
                ],
            )
            .await
            .map(|_| ())
    }

    /// The key stored under one of `key`'s hashes, with its owner's current role.
    async fn by_secret(&self, key: &str) -> Result<Option<(KeyRow, String)>, DbErr> {
        let [keyed, plain] = self.candidates(key);
        let sql = format!(
            "SELECT {KEY_COLUMNS}, u.role AS owner_role FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash IN (?, ?)"
        );
        match self
            .db
            .query_one(&sql, vec![keyed.into(), plain.into()])
            .await?
        {
            Some(row) => Ok(Some((Self::row(&row)?, row.try_get("", "owner_role")?))),
            None => Ok(None),
        }
    }

    async fn by_id(&self, id: &str) -> Result<Option<KeyRow>, DbErr> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = ?");
        self.db
            .query_one(&sql, vec![id.into()])
            .await?
            .as_ref()
            .map(Self::row)
            .transpose()
    }

    async fn of_user(&self, user_id: &str) -> Result<Vec<KeyRow>, DbErr> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.user_id = ? ORDER BY k.created_at DESC, k.id DESC"
        );
        self.db
            .query_all(&sql, vec![user_id.into()])
            .await?
            .iter()
            .map(Self::row)
            .collect()
    }

    async fn live_count(&self, user_id: &str, now: i64) -> Result<u64, DbErr> {
        let row = self
            .db
            .query_one(
                "SELECT COUNT(*) AS n FROM api_keys WHERE user_id = ? AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > ?)",
                vec![user_id.into(), now.into()],
            )
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0))
    }

    async fn revoke(&self, id: &str, now: i64) -> Result<bool, DbErr> {
        Ok(self
            .db
            .execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                vec![now.into(), id.into()],
            )
            .await?
            .rows_affected()
            == 1)
    }

    async fn touch(&self, id: &str, now: i64) -> Result<(), DbErr> {
        self.db
            .execute(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                vec![now.into(), id.into(), (now - LAST_USED_RESOLUTION_MS).into()],
            )
            .await
            .map(|_| ())
    }
}

/// A new secret: `pk_` + 43 base64url characters.
fn new_secret() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", B64.encode(bytes))
}

/// Whether `key` is shaped like a key this service issues (no lookup for anything else).
fn well_formed(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Checks and normalises requested scopes (deduplicated, in [`SCOPES`] order).
fn check_scopes(requested: &[String]) -> Result<Vec<String>, Error> {
    if requested.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "scopes must name at least one of {}",
            SCOPES.join(", ")
        )));
    }
    if let Some(unknown) = requested.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(Error::InvalidArgument(format!(
            "unknown scope `{}`: expected {}",
            unknown.chars().take(40).collect::<String>(),
            SCOPES.join(", ")
        )));
    }
    Ok(SCOPES
        .iter()
        .filter(|s| requested.iter().any(|r| r == *s))
        .map(|s| (*s).to_owned())
        .collect())
}

impl Accounts {
    /// Verifies a key: the row, the owner's current role, and whether it is live. The
    /// refusal's reason is for logs and never contains the key.
    pub async fn verify_api_key(
        &self,
        key: &str,
    ) -> Result<(KeyRow, String), portico_tokens::Refused> {
        use portico_tokens::Refused;
        if !well_formed(key) {
            return Err(Refused("malformed API key".into()));
        }
        let (row, role) = self
            .api_keys
            .by_secret(key)
            .await
            .map_err(|error| Refused(format!("API key store unavailable: {error}")))?
            .ok_or_else(|| Refused("unknown API key".into()))?;
        let now = self.now_ms();
        if row.revoked_at.is_some() {
            return Err(Refused(format!("API key {} is revoked", row.id)));
        }
        if row.expires_at.is_some_and(|at| at <= now) {
            return Err(Refused(format!("API key {} has expired", row.id)));
        }
        if row
            .last_used_at
            .is_none_or(|at| at < now - LAST_USED_RESOLUTION_MS)
        {
            // At most once a minute per key (verifiers cache their answers meanwhile), so the
            // write is rarely on a request's path; failing to record it refuses nothing.
            if let Err(error) = self.api_keys.touch(&row.id, now).await {
                tracing::warn!(%error, key_id = %row.id, "could not record an API key's last use");
            }
        }
        Ok((row, role))
    }

    /// The caller's API key (when its bearer is one), verified: used where a key may stand in
    /// for its owner. `Ok(None)` when the bearer is not an API key.
    pub(crate) async fn caller_api_key(
        &self,
        caller: &Caller,
    ) -> Result<Option<(KeyRow, String)>, Error> {
        let Some(key) = caller
            .bearer
            .as_deref()
            .filter(|b| b.starts_with(KEY_PREFIX))
        else {
            return Ok(None);
        };
        self.verify_api_key(key).await.map(Some).map_err(|refused| {
            tracing::info!(reason = %refused.0, "API key refused");
            Error::Unauthenticated("the API key is invalid, expired or revoked".into())
        })
    }

    /// Who manages keys in this call.
    async fn key_manager(&self, caller: &Caller) -> Result<Manager, Error> {
        if caller.admin_key.is_some() {
            self.require_admin(caller).await?;
            return Ok(Manager::AdminKey);
        }
        if let Some((key, role)) = self.caller_api_key(caller).await? {
            if !key.scopes.iter().any(|s| s == "admin") {
                return Err(Error::PermissionDenied(
                    "an API key needs the `admin` scope to manage API keys".into(),
                ));
            }
            return Ok(Manager::Account {
                user_id: key.user_id,
                admin: role == "admin",
            });
        }
        let claims = self.authenticate(caller).await?;
        // The owner's role now, not the one the token was issued with.
        let user = self
            .store
            .user_by_id(&claims.sub)
            .await?
            .ok_or_else(|| Error::Unauthenticated("the account no longer exists".into()))?;
        Ok(Manager::Account {
            user_id: user.id,
            admin: user.role == "admin",
        })
    }

    /// The account a call is about: the manager's own (`user` empty), or `user` (id or email)
    /// for an admin.
    async fn key_owner(&self, manager: &Manager, user: &str) -> Result<UserRow, Error> {
        let not_found = || Error::NotFound("no such account".into());
        if user.is_empty() {
            return match manager {
                Manager::AdminKey => Err(Error::InvalidArgument(
                    "with X-Admin-Key, name the account (`user`: an id or email)".into(),
                )),
                Manager::Account { user_id, .. } => {
                    self.store.user_by_id(user_id).await?.ok_or_else(|| {
                        Error::Unauthenticated("the account no longer exists".into())
                    })
                }
            };
        }
        if !manager.is_admin() {
            return Err(Error::PermissionDenied(
                "only admins manage other accounts' API keys".into(),
            ));
        }
        let found = if user.contains('@') {
            self.store.user_by_email(&normalize_email(user)?).await?
        } else if user.len() <= 36 {
            self.store.user_by_id(user).await?
        } else {
            None
        };
        found.ok_or_else(not_found)
    }

    /// A key the manager may see: its own, or any for an admin.
    async fn managed_key(&self, manager: &Manager, id: &str) -> Result<KeyRow, Error> {
        let not_found = || Error::NotFound("no such API key".into());
        if id.is_empty() || id.len() > 36 {
            return Err(not_found());
        }
        let key = self.api_keys.by_id(id).await?.ok_or_else(not_found)?;
        match manager {
            Manager::Account { user_id, admin } if !admin && *user_id != key.user_id => {
                Err(not_found())
            }
            _ => Ok(key),
        }
    }

    /// Creates a key; returns its row and the secret (shown once).
    pub async fn create_api_key(
        &self,
        request: NewKey,
        caller: &Caller,
    ) -> Result<(KeyRow, String), Error> {
        let manager = self.key_manager(caller).await?;
        let owner = self.key_owner(&manager, &request.user).await?;
        let name = request.name.trim().to_owned();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(Error::InvalidArgument(format!(
                "name must be 1 to {MAX_NAME_CHARS} printable characters"
            )));
        }
        let scopes = check_scopes(&request.scopes)?;
        if owner.role != "admin" && scopes.iter().any(|s| ADMIN_SCOPES.contains(&s.as_str())) {
            return Err(Error::PermissionDenied(
                "a key never exceeds its owner's rights: `admin` and `content:write` need an admin owner"
                    .into(),
            ));
        }
        if let Some((key, _)) = self.caller_api_key(caller).await? {
            // A key that creates keys hands out at most what it has.
            if let Some(extra) = scopes.iter().find(|s| !key.has(s)) {
                return Err(Error::PermissionDenied(format!(
                    "this API key lacks the `{extra}` scope it would grant"
                )));
            }
        }
        let expires_in = request.expires_in_seconds;
        if expires_in.is_some_and(|s| !EXPIRES_IN_SECONDS.contains(&s)) {
            return Err(Error::InvalidArgument(format!(
                "expiresIn must be {} s to {} s",
                EXPIRES_IN_SECONDS.start(),
                EXPIRES_IN_SECONDS.end()
            )));
        }
        let requests_per_minute = request.requests_per_minute.filter(|n| *n > 0);
        if requests_per_minute.is_some_and(|n| n > MAX_REQUESTS_PER_MINUTE) {
            return Err(Error::InvalidArgument(format!(
                "requestsPerMinute must be at most {MAX_REQUESTS_PER_MINUTE}"
            )));
        }
        let token_budget = request.token_budget.filter(|n| *n > 0);
        if token_budget.is_some_and(|n| n > MAX_TOKEN_BUDGET) {
            return Err(Error::InvalidArgument(format!(
                "tokenBudget must be at most {MAX_TOKEN_BUDGET}"
            )));
        }
        let window = request.budget_window_seconds;
        if window.is_some_and(|w| !BUDGET_WINDOW_SECONDS.contains(&w)) {
            return Err(Error::InvalidArgument(format!(
                "budgetWindow must be {} s to {} s",
                BUDGET_WINDOW_SECONDS.start(),
                BUDGET_WINDOW_SECONDS.end()
            )));
        }
        let now = self.now_ms();
        if self.api_keys.live_count(&owner.id, now).await? >= MAX_LIVE_KEYS {
            return Err(Error::FailedPrecondition(format!(
                "an account holds at most {MAX_LIVE_KEYS} live API keys; revoke one first"
            )));
        }
        let secret = new_secret();
        let row = KeyRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: owner.id.clone(),
            name,
            prefix: secret[..SHOWN_PREFIX_CHARS].to_owned(),
            scopes,
            requests_per_minute,
            token_budget,
            budget_window_seconds: token_budget
                .map(|_| window.unwrap_or(DEFAULT_BUDGET_WINDOW_SECONDS)),
            expires_at: expires_in.map(|s| now + (s as i64) * 1000),
            revoked_at: None,
            last_used_at: None,
            created_at: now,
        };
        self.api_keys
            .insert(&row, &self.api_keys.hash(&secret))
            .await?;
        self.audit(
            "API_KEY_CREATED",
            Some(&owner.id),
            None,
            caller,
            Some(&format!("key {} scopes {}", row.id, row.scopes.join(" "))),
        )
        .await;
        Ok((row, secret))
    }

    /// The keys of the caller, or of `user` (admin).
    pub async fn list_api_keys(&self, user: &str, caller: &Caller) -> Result<Vec<KeyRow>, Error> {
        let manager = self.key_manager(caller).await?;
        let owner = self.key_owner(&manager, user).await?;
        Ok(self.api_keys.of_user(&owner.id).await?)
    }

    /// One key of the caller (any, for an admin).
    pub async fn get_api_key(&self, id: &str, caller: &Caller) -> Result<KeyRow, Error> {
        let manager = self.key_manager(caller).await?;
        self.managed_key(&manager, id).await
    }

    /// Revokes a key of the caller (any, for an admin). Revoking a revoked key is a no-op.
    pub async fn revoke_api_key(&self, id: &str, caller: &Caller) -> Result<(), Error> {
        let manager = self.key_manager(caller).await?;
        let key = self.managed_key(&manager, id).await?;
        if self.api_keys.revoke(&key.id, self.now_ms()).await? {
            self.audit(
                "API_KEY_REVOKED",
                Some(&key.user_id),
                None,
                caller,
                Some(&format!("key {}", key.id)),
            )
            .await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_pk_and_256_random_bits_in_base64url() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
        assert!(well_formed(&a) && well_formed(&b));
        assert!(!well_formed("pk_short"));
        assert!(!well_formed(&a.replacen("pk_", "sk_", 1)));
        assert!(!well_formed(&format!("{}!", &a[..a.len() - 1])));
    }

    #[test]
    fn scopes_are_checked_deduplicated_and_ordered() {
        let owned = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            check_scopes(&owned(&["admin", "chat", "chat"])).expect("valid"),
            owned(&["chat", "admin"])
        );
        assert!(check_scopes(&[]).is_err());
        assert!(check_scopes(&owned(&["root"])).is_err());
    }
}
