//! The account lifecycle (issue 20): password reset and change, the sessions of an account,
//! account deletion, and the OpenID Connect discovery document. Each is one method over the
//! same store, guards and hasher as login.

use serde_json::json;

use crate::{
    accounts::{
        check_password, digest, normalize_email, random_token, Accounts, Caller, BAD_CREDENTIALS,
    },
    store::{SessionRow, UserRow},
    tokens::Claims,
    Error,
};

/// A session as callers see it.
#[derive(Debug, Clone)]
pub struct Session {
    pub row: SessionRow,
    /// Whether the caller's bearer token came from it.
    pub current: bool,
}

/// The counter of reset requests for `email` (Redis key, or `auth_counters` row).
fn reset_counter(email: &str) -> String {
    format!("password_reset:{email}")
}

/// Every counter kept under `email` (removed with the account).
fn counters(email: &str) -> Vec<String> {
    vec![reset_counter(email)]
}

fn check_token(token: &str, name: &str) -> Result<(), Error> {
    if token.is_empty() || token.chars().count() > 256 {
        return Err(Error::InvalidArgument(format!("{name} is required")));
    }
    Ok(())
}

/// The claims of the discovery document: what Portico's access tokens carry.
const CLAIMS: [&str; 8] = ["iss", "aud", "sub", "role", "jti", "iat", "nbf", "exp"];

impl Accounts {
    /// Answers at once, the same way whether or not `email` has an account: only the per-address
    /// limit is checked on the request path (it counts every address, known or not). The
    /// lookup, the token and the mail happen afterwards, in the background.
    pub async fn request_password_reset(&self, email: &str, caller: &Caller) -> Result<(), Error> {
        let email = normalize_email(email)?;
        let now = self.now_ms();
        let window = self.settings.password_reset_account_window.as_millis() as i64;
        let (count, left_ms) = self
            .guards
            .hit(&reset_counter(&email), now, window)
            .await
            .map_err(Error::LockoutStore)?;
        if count > i64::from(self.settings.password_reset_account_max) {
            if count == i64::from(self.settings.password_reset_account_max) + 1 {
                self.audit("PASSWORD_RESET_LIMITED", None, Some(&email), caller, None)
                    .await;
            }
            return Err(Error::RateLimited {
                seconds: (left_ms.max(0) as u64).div_ceil(1000).max(1),
                message: "too many password reset requests for this address".into(),
            });
        }
        let accounts = self.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            if let Err(error) = accounts.send_reset(&email, &caller).await {
                tracing::error!(%error, "password reset not sent");
            }
        });
        Ok(())
    }

    /// The background half of a reset request.
    async fn send_reset(&self, email: &str, caller: &Caller) -> Result<(), Error> {
        let Some(user) = self.store.user_by_email(email).await? else {
            self.audit(
                "PASSWORD_RESET_REQUESTED",
                None,
                Some(email),
                caller,
                Some("no such account"),
            )
            .await;
            return Ok(());
        };
        let undeliverable = self.production && !self.sender.delivers();
        self.audit(
            "PASSWORD_RESET_REQUESTED",
            Some(&user.id),
            Some(email),
            caller,
            undeliverable.then_some("no mailer delivers it"),
        )
        .await;
        if undeliverable {
            // The built-in sender writes tokens to the log: in production whoever reads logs
            // could take over any account with one. No token is made at all.
            tracing::warn!(
                "password reset requested, but no mailer delivers it (APP_ENV=production with \
                 the log-only sender); see RUNBOOK 12b: resetting a user's password"
            );
            return Ok(());
        }
        let token = self.issue_reset(&user).await?;
        let sender = self.sender.clone();
        let email = email.to_owned();
        tokio::task::spawn_blocking(move || sender.send_password_reset(&email, &token))
            .await
            .map_err(|e| Error::Internal(format!("mailer: {e}")))
    }

    /// Stores a new reset token for `user` (hashed) and returns it.
    async fn issue_reset(&self, user: &UserRow) -> Result<String, Error> {
        let token = random_token();
        let now = self.now_ms();
        let expires = now + self.settings.password_reset_ttl.as_millis() as i64;
        self.store
            .insert_reset(&digest(&token), &user.id, expires, now)
            .await?;
        Ok(token)
    }

    /// Spends a reset token and sets `password`: every session of the account is revoked and
    /// its live access tokens denylisted; its lockouts are cleared. Returns sessions revoked.
    pub async fn confirm_password_reset(
        &self,
        token: &str,
        password: String,
        caller: &Caller,
    ) -> Result<u32, Error> {
        check_token(token, "token")?;
        let password = check_password(&password)?;
        let hash = digest(token);
        let invalid =
            || Error::InvalidArgument("password reset token is invalid, used or expired".into());
        // Checked before the (costly) hash, spent after it: a refused hash keeps the token.
        if !self.store.reset_is_live(&hash, self.now_ms()).await? {
            return Err(invalid());
        }
        let password_hash = self.passwords.hash(password).await?;
        let now = self.now_ms();
        let user_id = self
            .store
            .use_reset(&hash, now)
            .await?
            .ok_or_else(invalid)?;
        let user = self.store.user_by_id(&user_id).await?.ok_or_else(invalid)?;
        self.store
            .set_password_hash(&user.id, &password_hash, now)
            .await?;
        self.store.spend_resets(&user.id, now).await?;
        let revoked = self.end_sessions(&user.id, None).await?;
        if let Err(error) = self.guards.unlock(&user.email, None).await {
            tracing::warn!(%error, "lockouts not cleared after a password reset");
        }
        self.audit(
            "PASSWORD_RESET_COMPLETED",
            Some(&user.id),
            Some(&user.email),
            caller,
            Some(&format!("{revoked} sessions revoked")),
        )
        .await;
        Ok(revoked)
    }

    /// Re-authentication: `password` must be the account's, under the login lockout rules.
    async fn reauthenticate(
        &self,
        user: &UserRow,
        password: String,
        caller: &Caller,
    ) -> Result<(), Error> {
        match self
            .check_credentials(&user.email, password, caller, Some("re-authentication"))
            .await
        {
            Ok((checked, _, _)) if checked.id == user.id => Ok(()),
            Ok(_) => Err(Error::PermissionDenied(
                "the password is not correct".into(),
            )),
            Err(Error::Unauthenticated(message)) if message == BAD_CREDENTIALS => Err(
                Error::PermissionDenied("the password is not correct".into()),
            ),
            Err(error) => Err(error),
        }
    }

    /// The caller (bearer) changes its password. Returns sessions revoked.
    pub async fn change_password(
        &self,
        current: String,
        new: String,
        revoke_other_sessions: bool,
        caller: &Caller,
    ) -> Result<u32, Error> {
        let (user, claims) = self.caller_account(caller).await?;
        let new = check_password(&new)?;
        self.reauthenticate(&user, current, caller).await?;
        let password_hash = self.passwords.hash(new).await?;
        let now = self.now_ms();
        self.store
            .set_password_hash(&user.id, &password_hash, now)
            .await?;
        self.store.spend_resets(&user.id, now).await?;
        let revoked = if revoke_other_sessions {
            let current = self.store.family_of_access(&claims.jti).await?;
            self.end_sessions(&user.id, current.as_deref()).await?
        } else {
            0
        };
        self.audit(
            "PASSWORD_CHANGED",
            Some(&user.id),
            Some(&user.email),
            caller,
            Some(&format!("{revoked} other sessions revoked")),
        )
        .await;
        Ok(revoked)
    }

    /// The caller's account and claims.
    async fn caller_account(&self, caller: &Caller) -> Result<(UserRow, Claims), Error> {
        let claims = self.authenticate(caller).await?;
        let user = self
            .store
            .user_by_id(&claims.sub)
            .await?
            .ok_or_else(|| Error::Unauthenticated("the account no longer exists".into()))?;
        Ok((user, claims))
    }

    /// Whose sessions or account a call is about: the caller's (`user` empty), or, for an
    /// admin, the account with id or email `user`. The caller's claims come with its own.
    async fn target(
        &self,
        user: &str,
        caller: &Caller,
    ) -> Result<(UserRow, Option<Claims>), Error> {
        if user.is_empty() {
            let (account, claims) = self.caller_account(caller).await?;
            return Ok((account, Some(claims)));
        }
        self.require_admin(caller).await?;
        let found = if user.contains('@') {
            self.store.user_by_email(&normalize_email(user)?).await?
        } else if user.len() <= 36 {
            self.store.user_by_id(user).await?
        } else {
            None
        };
        let account = found.ok_or_else(|| Error::NotFound("no such account".into()))?;
        Ok((account, None))
    }

    /// The live sessions of the caller (or of `user`, admin).
    pub async fn list_sessions(&self, user: &str, caller: &Caller) -> Result<Vec<Session>, Error> {
        let (account, claims) = self.target(user, caller).await?;
        let current = match &claims {
            Some(claims) => self.store.family_of_access(&claims.jti).await?,
            None => None,
        };
        Ok(self
            .store
            .sessions(&account.id, self.now_ms())
            .await?
            .into_iter()
            .map(|row| Session {
                current: current.as_deref() == Some(row.family_id.as_str()),
                row,
            })
            .collect())
    }

    /// Ends one session of the caller (or of `user`, admin).
    pub async fn revoke_session(
        &self,
        user: &str,
        session_id: &str,
        caller: &Caller,
    ) -> Result<(), Error> {
        if session_id.is_empty() || session_id.chars().count() > 36 {
            return Err(Error::InvalidArgument(
                "sessionId must be a session id".into(),
            ));
        }
        let (account, _) = self.target(user, caller).await?;
        let now = self.now_ms();
        if !self
            .store
            .revoke_session(&account.id, session_id, now)
            .await?
        {
            return Err(Error::NotFound("no such session".into()));
        }
        self.deny_live(&account.id, now, Some(session_id), None)
            .await?;
        self.audit(
            "SESSION_REVOKED",
            Some(&account.id),
            None,
            caller,
            Some(&format!("family {session_id}")),
        )
        .await;
        Ok(())
    }

    /// "Log out everywhere": every session of the caller (or of `user`, admin), the caller's
    /// own included.
    pub async fn revoke_all_sessions(&self, user: &str, caller: &Caller) -> Result<u32, Error> {
        let (account, _) = self.target(user, caller).await?;
        let revoked = self.end_sessions(&account.id, None).await?;
        self.audit(
            "TOKEN_REVOKED",
            Some(&account.id),
            None,
            caller,
            Some(&format!("every session ({revoked})")),
        )
        .await;
        Ok(revoked)
    }

    /// Deletes the caller's account (re-authenticated with `password`) or, for an admin, the
    /// account `user`. Returns its id.
    ///
    /// What goes: the account row, every refresh token (all sessions), verification and reset
    /// tokens, lockout rows and Redis keys (attempts, lockouts, known networks, counters).
    /// What stays: its live access tokens' `jti`s on the denylist until they expire (so they
    /// are refused everywhere; a `jti` is random and names no one), and its audit rows, with a
    /// random pseudonym instead of the user id and without email or IP: the trail of what
    /// happened (and that the deletion was carried out) survives, the person does not.
    pub async fn delete_account(
        &self,
        user: &str,
        password: String,
        caller: &Caller,
    ) -> Result<String, Error> {
        let by_owner = user.is_empty();
        let (account, _) = self.target(user, caller).await?;
        if by_owner {
            if password.is_empty() {
                return Err(Error::InvalidArgument(
                    "password is required to delete your own account".into(),
                ));
            }
            self.reauthenticate(&account, password, caller).await?;
        }
        self.end_sessions(&account.id, None).await?;
        let counters = counters(&account.email);
        self.guards
            .forget(&account.email, &counters)
            .await
            .map_err(Error::LockoutStore)?;
        let pseudonym = uuid::Uuid::new_v4().to_string();
        if !self
            .store
            .delete_account(&account.id, &account.email, &counters, &pseudonym)
            .await?
        {
            return Err(Error::NotFound("no such account".into()));
        }
        // Neither the email nor the IP: this row is about someone who asked to be forgotten.
        let anonymous = Caller {
            ip: String::new(),
            ..caller.clone()
        };
        let by = if by_owner {
            "by the account's owner"
        } else {
            "by an admin"
        };
        self.audit(
            "ACCOUNT_DELETED",
            Some(&pseudonym),
            None,
            &anonymous,
            Some(by),
        )
        .await;
        Ok(account.id)
    }

    /// The OpenID Connect discovery document. Endpoint URLs are built on `JWT_ISSUER` when it
    /// is an http(s) URL (it should be: discovery finds the document at
    /// `{issuer}/.well-known/openid-configuration`), else on `base_url` (the edge's URL as the
    /// request reached it).
    pub fn openid_configuration(&self, base_url: &str) -> String {
        let issuer = &self.settings.issuer;
        let base = if issuer.starts_with("https://") || issuer.starts_with("http://") {
            issuer.trim_end_matches('/')
        } else {
            base_url.trim_end_matches('/')
        };
        let url = |path: &str| format!("{base}{path}");
        json!({
            "issuer": issuer,
            "jwks_uri": url("/.well-known/jwks.json"),
            "id_token_signing_alg_values_supported": self.keys.algorithms(),
            "subject_types_supported": ["public"],
            "claims_supported": CLAIMS,
            "service_documentation": url("/api/openapi.json"),
            // Portico's own (JSON, not OAuth 2.0 form) endpoints, under its own names: standard
            // clients must not mistake them for an authorization server's.
            "portico_endpoints": {
                "register": url("/api/v1/auth/register"),
                "login": url("/api/v1/auth/login"),
                "refresh": url("/api/v1/auth/refresh"),
                "logout": url("/api/v1/auth/logout"),
                "me": url("/api/v1/auth/me"),
                "verify_email": url("/api/v1/auth/verify-email"),
                "password_reset": url("/api/v1/auth/password-reset"),
                "password_reset_confirm": url("/api/v1/auth/password-reset/confirm"),
                "password": url("/api/v1/auth/password"),
                "sessions": url("/api/v1/auth/sessions"),
            },
        })
        .to_string()
    }
}
