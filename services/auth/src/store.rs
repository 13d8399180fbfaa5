//! The auth service's tables (docs/CONTRACT.md §9), through plain SQL that runs unchanged on SQLite and
//! PostgreSQL. Every race the issue names is decided by one conditional statement: a refresh
//! token is spent by `UPDATE … WHERE spent_at IS NULL` (one winner), a verification token
//! likewise, and a family counts as revoked as soon as any of its rows is.

use portico_migrations::Db;
use sea_orm::{DbErr, QueryResult, Value};

/// An account row.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub email_verified: bool,
    pub created_at: i64,
}

/// A refresh token row.
#[derive(Debug, Clone)]
pub struct RefreshRow {
    pub family_id: String,
    pub user_id: String,
    pub expires_at: i64,
    pub spent_at: Option<i64>,
    pub family_revoked: bool,
    /// The successor pair sealed with a key only the spent token derives (grace period).
    pub successor: Option<String>,
}

/// What an issued pair records besides its refresh token.
#[derive(Debug, Clone, Default)]
pub struct Issued<'a> {
    pub access_jti: &'a str,
    pub access_expires_at: i64,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// One session: a refresh family that is neither revoked nor expired.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub family_id: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Database access.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    async fn execute(&self, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
        Ok(self.db.execute(sql, values).await?.rows_affected())
    }

    async fn one(&self, sql: &str, values: Vec<Value>) -> Result<Option<QueryResult>, DbErr> {
        self.db.query_one(sql, values).await
    }

    // ---- users

    pub async fn insert_user(&self, user: &UserRow) -> Result<(), DbErr> {
        self.execute(
            "INSERT INTO users (id, email, password_hash, role, email_verified, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            vec![
                user.id.clone().into(),
                user.email.clone().into(),
                user.password_hash.clone().into(),
                user.role.clone().into(),
                user.email_verified.into(),
                user.created_at.into(),
                user.created_at.into(),
            ],
        )
        .await
        .map(|_| ())
    }

    fn user(row: &QueryResult) -> Result<UserRow, DbErr> {
        Ok(UserRow {
            id: row.try_get("", "id")?,
            email: row.try_get("", "email")?,
            password_hash: row.try_get("", "password_hash")?,
            role: row.try_get("", "role")?,
            email_verified: row.try_get("", "email_verified")?,
            created_at: row.try_get("", "created_at")?,
        })
    }

    const USER_COLUMNS: &'static str = "id, email, password_hash, role, email_verified, created_at";

    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>, DbErr> {
        let sql = format!("SELECT {} FROM users WHERE email = ?", Self::USER_COLUMNS);
        self.one(&sql, vec![email.into()])
            .await?
            .as_ref()
            .map(Self::user)
            .transpose()
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>, DbErr> {
        let sql = format!("SELECT {} FROM users WHERE id = ?", Self::USER_COLUMNS);
        self.one(&sql, vec![id.into()])
            .await?
            .as_ref()
            .map(Self::user)
            .transpose()
    }

    pub async fn set_password_hash(&self, id: &str, hash: &str, now: i64) -> Result<(), DbErr> {
        self.execute(
            "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?",
            vec![hash.into(), now.into(), id.into()],
        )
        .await
        .map(|_| ())
    }

    pub async fn set_role(&self, id: &str, role: &str, now: i64) -> Result<(), DbErr> {
        self.execute(
            "UPDATE users SET role = ?, updated_at = ? WHERE id = ?",
            vec![role.into(), now.into(), id.into()],
        )
        .await
        .map(|_| ())
    }

    /// Sets the role of the account with `email`; false when there is none.
    pub async fn set_role_by_email(
        &self,
        email: &str,
        role: &str,
        now: i64,
    ) -> Result<bool, DbErr> {
        Ok(self
            .execute(
                "UPDATE users SET role = ?, updated_at = ? WHERE email = ?",
                vec![role.into(), now.into(), email.into()],
            )
            .await?
            == 1)
    }

    pub async fn set_verified(&self, id: &str, now: i64) -> Result<(), DbErr> {
        self.execute(
            "UPDATE users SET email_verified = ?, updated_at = ? WHERE id = ?",
            vec![true.into(), now.into(), id.into()],
        )
        .await
        .map(|_| ())
    }

    // ---- refresh tokens

    #[allow(clippy::too_many_arguments)]
    pub async fn insert_refresh(
        &self,
        token_hash: &str,
        family_id: &str,
        user_id: &str,
        expires_at: i64,
        now: i64,
        issued: &Issued<'_>,
    ) -> Result<(), DbErr> {
        self.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, created_at, access_jti, access_expires_at, ip, user_agent) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                token_hash.into(),
                family_id.into(),
                user_id.into(),
                expires_at.into(),
                now.into(),
                issued.access_jti.into(),
                issued.access_expires_at.into(),
                issued.ip.map(str::to_owned).into(),
                issued.user_agent.map(str::to_owned).into(),
            ],
        )
        .await
        .map(|_| ())
    }

    /// Removes a token that was never handed out (its spend lost a race).
    pub async fn delete_refresh(&self, token_hash: &str) -> Result<(), DbErr> {
        self.execute(
            "DELETE FROM refresh_tokens WHERE token_hash = ?",
            vec![token_hash.into()],
        )
        .await
        .map(|_| ())
    }

    /// Spends a live token of a live family, recording its sealed successor in the same
    /// statement; true for the one caller that did.
    pub async fn spend_refresh(
        &self,
        token_hash: &str,
        now: i64,
        successor: Option<&str>,
    ) -> Result<bool, DbErr> {
        let spent = self
            .execute(
                "UPDATE refresh_tokens SET spent_at = ?, successor = ? \
                 WHERE token_hash = ? AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > ? \
                 AND NOT EXISTS (SELECT 1 FROM refresh_tokens f WHERE f.family_id = refresh_tokens.family_id AND f.revoked_at IS NOT NULL)",
                vec![
                    now.into(),
                    successor.map(str::to_owned).into(),
                    token_hash.into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(spent == 1)
    }

    pub async fn refresh_by_hash(&self, token_hash: &str) -> Result<Option<RefreshRow>, DbErr> {
        let row = self
            .one(
                "SELECT t.family_id, t.user_id, t.expires_at, t.spent_at, t.successor, \
                 (SELECT COUNT(*) FROM refresh_tokens f WHERE f.family_id = t.family_id AND f.revoked_at IS NOT NULL) AS revoked \
                 FROM refresh_tokens t WHERE t.token_hash = ?",
                vec![token_hash.into()],
            )
            .await?;
        row.map(|row| {
            Ok(RefreshRow {
                family_id: row.try_get("", "family_id")?,
                user_id: row.try_get("", "user_id")?,
                expires_at: row.try_get("", "expires_at")?,
                spent_at: row.try_get("", "spent_at")?,
                family_revoked: row.try_get::<i64>("", "revoked")? > 0,
                successor: row.try_get("", "successor")?,
            })
        })
        .transpose()
    }

    /// The family (and its user) that issued the access token `jti`.
    pub async fn family_of_access(&self, jti: &str) -> Result<Option<String>, DbErr> {
        self.one(
            "SELECT family_id FROM refresh_tokens WHERE access_jti = ?",
            vec![jti.into()],
        )
        .await?
        .map(|row| row.try_get("", "family_id"))
        .transpose()
    }

    /// The user's sessions: families with no revoked token and a token still unexpired,
    /// most recently used first.
    pub async fn sessions(&self, user_id: &str, now: i64) -> Result<Vec<SessionRow>, DbErr> {
        let rows = self
            .db
            .query_all(
                "SELECT family_id, MIN(created_at) AS first_at, MAX(created_at) AS last_at \
                 FROM refresh_tokens WHERE user_id = ? GROUP BY family_id \
                 HAVING COUNT(revoked_at) = 0 AND MAX(expires_at) > ? \
                 ORDER BY last_at DESC, family_id",
                vec![user_id.into(), now.into()],
            )
            .await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            let family_id: String = row.try_get("", "family_id")?;
            let latest = self
                .one(
                    "SELECT ip, user_agent FROM refresh_tokens WHERE family_id = ? \
                     ORDER BY created_at DESC, token_hash LIMIT 1",
                    vec![family_id.clone().into()],
                )
                .await?;
            let (ip, user_agent) = match latest {
                Some(latest) => (latest.try_get("", "ip")?, latest.try_get("", "user_agent")?),
                None => (None, None),
            };
            sessions.push(SessionRow {
                family_id,
                created_at: row.try_get("", "first_at")?,
                last_used_at: row.try_get("", "last_at")?,
                ip,
                user_agent,
            });
        }
        Ok(sessions)
    }

    /// Access tokens of `user_id` that have not expired (`jti`, expiry in ms), of one family
    /// or of every family but one.
    pub async fn live_access(
        &self,
        user_id: &str,
        now: i64,
        only: Option<&str>,
        except: Option<&str>,
    ) -> Result<Vec<(String, i64)>, DbErr> {
        let mut sql = String::from(
            "SELECT access_jti, access_expires_at FROM refresh_tokens \
             WHERE user_id = ? AND access_jti IS NOT NULL AND access_expires_at > ?",
        );
        let mut values: Vec<Value> = vec![user_id.into(), now.into()];
        if let Some(family) = only {
            sql.push_str(" AND family_id = ?");
            values.push(family.into());
        }
        if let Some(family) = except {
            sql.push_str(" AND family_id <> ?");
            values.push(family.into());
        }
        self.db
            .query_all(&sql, values)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("", "access_jti")?,
                    row.try_get("", "access_expires_at")?,
                ))
            })
            .collect()
    }

    /// Revokes `family_id` if it is a live family of `user_id`; false when it is not.
    pub async fn revoke_session(
        &self,
        user_id: &str,
        family_id: &str,
        now: i64,
    ) -> Result<bool, DbErr> {
        let revoked = self
            .execute(
                "UPDATE refresh_tokens SET revoked_at = ? \
                 WHERE family_id = ? AND user_id = ? AND revoked_at IS NULL",
                vec![now.into(), family_id.into(), user_id.into()],
            )
            .await?;
        Ok(revoked > 0)
    }

    /// Revokes every token of a family (tokens added to it later are revoked with it).
    pub async fn revoke_family(&self, family_id: &str, now: i64) -> Result<u64, DbErr> {
        self.execute(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
            vec![now.into(), family_id.into()],
        )
        .await
    }

    /// Revokes every family of a user (but `except`); returns how many families that touched.
    pub async fn revoke_user(
        &self,
        user_id: &str,
        now: i64,
        except: Option<&str>,
    ) -> Result<u32, DbErr> {
        let except = except.unwrap_or("");
        let families = self
            .one(
                "SELECT COUNT(DISTINCT family_id) AS n FROM refresh_tokens \
                 WHERE user_id = ? AND revoked_at IS NULL AND family_id <> ?",
                vec![user_id.into(), except.into()],
            )
            .await?
            .map(|row| row.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        self.execute(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL AND family_id <> ?",
            vec![now.into(), user_id.into(), except.into()],
        )
        .await?;
        Ok(u32::try_from(families).unwrap_or(u32::MAX))
    }

    // ---- password resets

    pub async fn insert_reset(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), DbErr> {
        self.execute(
            "INSERT INTO password_resets (token_hash, user_id, expires_at, created_at) VALUES (?, ?, ?, ?)",
            vec![token_hash.into(), user_id.into(), expires_at.into(), now.into()],
        )
        .await
        .map(|_| ())
    }

    /// Whether a reset token is unused and unexpired (a read: nothing is spent).
    pub async fn reset_is_live(&self, token_hash: &str, now: i64) -> Result<bool, DbErr> {
        Ok(self
            .one(
                "SELECT 1 AS hit FROM password_resets WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                vec![token_hash.into(), now.into()],
            )
            .await?
            .is_some())
    }

    /// Uses a live reset token once (one conditional update: one winner); returns its user.
    pub async fn use_reset(&self, token_hash: &str, now: i64) -> Result<Option<String>, DbErr> {
        let used = self
            .execute(
                "UPDATE password_resets SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                vec![now.into(), token_hash.into(), now.into()],
            )
            .await?;
        if used != 1 {
            return Ok(None);
        }
        self.one(
            "SELECT user_id FROM password_resets WHERE token_hash = ?",
            vec![token_hash.into()],
        )
        .await?
        .map(|row| row.try_get("", "user_id"))
        .transpose()
    }

    /// Spends every outstanding reset token of `user_id` (the password just changed).
    pub async fn spend_resets(&self, user_id: &str, now: i64) -> Result<(), DbErr> {
        self.execute(
            "UPDATE password_resets SET used_at = ? WHERE user_id = ? AND used_at IS NULL",
            vec![now.into(), user_id.into()],
        )
        .await
        .map(|_| ())
    }

    // ---- counters (without Redis)

    /// Counts one event of `name` in a fixed window; returns the count and the window's start.
    pub async fn hit(&self, name: &str, now: i64, window_ms: i64) -> Result<(i64, i64), DbErr> {
        let window_start = now - window_ms;
        let row = self
            .one(
                "INSERT INTO auth_counters (name, count, window_started_at) VALUES (?, 1, ?) \
                 ON CONFLICT (name) DO UPDATE SET \
                 count = CASE WHEN auth_counters.window_started_at <= ? THEN 1 ELSE auth_counters.count + 1 END, \
                 window_started_at = CASE WHEN auth_counters.window_started_at <= ? THEN ? ELSE auth_counters.window_started_at END \
                 RETURNING count, window_started_at",
                vec![
                    name.into(),
                    now.into(),
                    window_start.into(),
                    window_start.into(),
                    now.into(),
                ],
            )
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("auth_counters".into()))?;
        // `count` is INTEGER: INT4 on PostgreSQL, so it decodes as i32 there.
        let count: i32 = row.try_get("", "count")?;
        Ok((i64::from(count), row.try_get("", "window_started_at")?))
    }

    // ---- account deletion

    /// Deletes the account and everything keyed by it, in one transaction: its tokens of every
    /// kind, its lockout rows and counters. Its audit rows stay, with `pseudonym` for the user
    /// id and neither email nor IP. False when there was no such account.
    pub async fn delete_account(
        &self,
        user_id: &str,
        email: &str,
        counters: &[String],
        pseudonym: &str,
    ) -> Result<bool, DbErr> {
        use sea_orm::{ConnectionTrait as _, TransactionTrait as _};
        let connection = self.db.connection();
        let txn = connection.begin().await?;
        let run =
            |sql: &str, values: Vec<Value>| portico_migrations::statement(connection, sql, values);
        txn.execute(run(
            "UPDATE audit_events SET user_id = ?, email = NULL, ip = NULL WHERE user_id = ? OR email = ?",
            vec![pseudonym.into(), user_id.into(), email.into()],
        ))
        .await?;
        for table in [
            "refresh_tokens",
            "email_verifications",
            "password_resets",
            "api_keys",
        ] {
            txn.execute(run(
                &format!("DELETE FROM {table} WHERE user_id = ?"),
                vec![user_id.into()],
            ))
            .await?;
        }
        txn.execute(run(
            "DELETE FROM lockouts WHERE email = ?",
            vec![email.into()],
        ))
        .await?;
        for name in counters {
            txn.execute(run(
                "DELETE FROM auth_counters WHERE name = ?",
                vec![name.clone().into()],
            ))
            .await?;
        }
        let deleted = txn
            .execute(run("DELETE FROM users WHERE id = ?", vec![user_id.into()]))
            .await?
            .rows_affected();
        txn.commit().await?;
        Ok(deleted == 1)
    }

    // ---- email verification

    pub async fn insert_verification(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_at: i64,
    ) -> Result<(), DbErr> {
        self.execute(
            "INSERT INTO email_verifications (token_hash, user_id, expires_at) VALUES (?, ?, ?)",
            vec![token_hash.into(), user_id.into(), expires_at.into()],
        )
        .await
        .map(|_| ())
    }

    /// Uses a live verification token once; returns its user.
    pub async fn use_verification(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<String>, DbErr> {
        let used = self
            .execute(
                "UPDATE email_verifications SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                vec![now.into(), token_hash.into(), now.into()],
            )
            .await?;
        if used != 1 {
            return Ok(None);
        }
        self.one(
            "SELECT user_id FROM email_verifications WHERE token_hash = ?",
            vec![token_hash.into()],
        )
        .await?
        .map(|row| row.try_get("", "user_id"))
        .transpose()
    }

    // ---- denylist (without Redis)

    pub async fn deny(&self, jti: &str, expires_at: i64) -> Result<(), DbErr> {
        self.execute(
            "INSERT INTO token_denylist (jti, expires_at) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING",
            vec![jti.into(), expires_at.into()],
        )
        .await
        .map(|_| ())
    }

    pub async fn is_denied(&self, jti: &str, now: i64) -> Result<bool, DbErr> {
        Ok(self
            .one(
                "SELECT 1 AS hit FROM token_denylist WHERE jti = ? AND expires_at > ?",
                vec![jti.into(), now.into()],
            )
            .await?
            .is_some())
    }

    // ---- lockouts (without Redis)

    /// Reserves one login attempt for `email`+`ip` within the window; returns the attempt's
    /// number and the lockout end if one is active. One upsert, so it cannot race a
    /// concurrent success that deletes the row (the row is created or updated, never missed).
    pub async fn reserve_attempt(
        &self,
        email: &str,
        ip: &str,
        now: i64,
        window_ms: i64,
    ) -> Result<(i64, Option<i64>), DbErr> {
        let window_start = now - window_ms;
        let row = self
            .one(
                "INSERT INTO lockouts (email, ip, failures, window_started_at) VALUES (?, ?, 1, ?) \
                 ON CONFLICT (email, ip) DO UPDATE SET \
                 failures = CASE WHEN lockouts.window_started_at <= ? THEN 1 ELSE lockouts.failures + 1 END, \
                 window_started_at = CASE WHEN lockouts.window_started_at <= ? THEN ? ELSE lockouts.window_started_at END \
                 RETURNING failures, locked_until",
                vec![
                    email.into(),
                    ip.into(),
                    now.into(),
                    window_start.into(),
                    window_start.into(),
                    now.into(),
                ],
            )
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("lockouts".into()))?;
        // `failures` is INTEGER: INT4 on PostgreSQL, so it decodes as i32 there.
        let failures: i32 = row.try_get("", "failures")?;
        Ok((i64::from(failures), row.try_get("", "locked_until")?))
    }

    /// Reserves one attempt on the account-wide row `account` of `email`: like
    /// [`Store::reserve_attempt`], but the window slides (it restarts only after a quiet
    /// window), so a slow, steady attack keeps its count. Returns the count and the next time
    /// an attempt may be checked.
    pub async fn reserve_account(
        &self,
        email: &str,
        account: &str,
        now: i64,
        window_ms: i64,
    ) -> Result<(i64, Option<i64>), DbErr> {
        let row = self
            .one(
                "INSERT INTO lockouts (email, ip, failures, window_started_at) VALUES (?, ?, 1, ?) \
                 ON CONFLICT (email, ip) DO UPDATE SET \
                 failures = CASE WHEN lockouts.window_started_at <= ? THEN 1 ELSE lockouts.failures + 1 END, \
                 window_started_at = ? \
                 RETURNING failures, locked_until",
                vec![
                    email.into(),
                    account.into(),
                    now.into(),
                    (now - window_ms).into(),
                    now.into(),
                ],
            )
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("lockouts".into()))?;
        let failures: i32 = row.try_get("", "failures")?;
        Ok((i64::from(failures), row.try_get("", "locked_until")?))
    }

    /// Claims the account's next back-off slot: sets its next allowed time to `until` unless
    /// another attempt already did (true for the one caller that did).
    pub async fn take_account_slot(
        &self,
        email: &str,
        account: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, DbErr> {
        let taken = self
            .execute(
                "UPDATE lockouts SET locked_until = ? WHERE email = ? AND ip = ? \
                 AND (locked_until IS NULL OR locked_until <= ?)",
                vec![until.into(), email.into(), account.into(), now.into()],
            )
            .await?;
        Ok(taken == 1)
    }

    /// Whether `email` logged in successfully from the network of row `known` since `since`.
    pub async fn is_known(&self, email: &str, known: &str, since: i64) -> Result<bool, DbErr> {
        Ok(self
            .one(
                "SELECT 1 AS hit FROM lockouts WHERE email = ? AND ip = ? AND window_started_at > ?",
                vec![email.into(), known.into(), since.into()],
            )
            .await?
            .is_some())
    }

    /// Remembers that `email` logged in from the network of row `known` at `now`.
    pub async fn mark_known(&self, email: &str, known: &str, now: i64) -> Result<(), DbErr> {
        self.execute(
            "INSERT INTO lockouts (email, ip, failures, window_started_at) VALUES (?, ?, 0, ?) \
             ON CONFLICT (email, ip) DO UPDATE SET window_started_at = excluded.window_started_at",
            vec![email.into(), known.into(), now.into()],
        )
        .await
        .map(|_| ())
    }

    /// Gives back an attempt that was reserved but never checked (the check failed).
    pub async fn release_attempt(&self, email: &str, ip: &str) -> Result<(), DbErr> {
        self.execute(
            "UPDATE lockouts SET failures = failures - 1 WHERE email = ? AND ip = ? AND failures > 0",
            vec![email.into(), ip.into()],
        )
        .await
        .map(|_| ())
    }

    pub async fn locked_until(&self, email: &str, ip: &str) -> Result<Option<i64>, DbErr> {
        Ok(self
            .one(
                "SELECT locked_until FROM lockouts WHERE email = ? AND ip = ?",
                vec![email.into(), ip.into()],
            )
            .await?
            .map(|row| row.try_get::<Option<i64>>("", "locked_until"))
            .transpose()?
            .flatten())
    }

    pub async fn lock(&self, email: &str, ip: &str, now: i64, until: i64) -> Result<(), DbErr> {
        // An upsert: a concurrent success may have deleted the row since the attempt.
        self.execute(
            "INSERT INTO lockouts (email, ip, failures, window_started_at, locked_until) VALUES (?, ?, 0, ?, ?) \
             ON CONFLICT (email, ip) DO UPDATE SET locked_until = excluded.locked_until, failures = 0",
            vec![email.into(), ip.into(), now.into(), until.into()],
        )
        .await
        .map(|_| ())
    }

    /// Lockouts in force at `now` (of `email` only, when given), the latest to end first:
    /// `(email, network or "*", locked_until)`, at most `limit`.
    pub async fn lockouts(
        &self,
        email: Option<&str>,
        now: i64,
        limit: u64,
    ) -> Result<Vec<(String, String, i64)>, DbErr> {
        let (filter, mut values): (&str, Vec<Value>) = match email {
            Some(email) => ("AND email = ? ", vec![now.into(), email.into()]),
            None => ("", vec![now.into()]),
        };
        values.push((limit as i64).into());
        let rows = self
            .db
            .query_all(
                &format!(
                    "SELECT email, ip, locked_until FROM lockouts WHERE locked_until > ? {filter}\
                     ORDER BY locked_until DESC, email, ip LIMIT ?"
                ),
                values,
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("", "email")?,
                    row.try_get("", "ip")?,
                    row.try_get("", "locked_until")?,
                ))
            })
            .collect()
    }

    /// Forgets the attempts of `email`+`ip` (or of every network; known networks stay known).
    pub async fn clear_attempts(&self, email: &str, ip: Option<&str>) -> Result<u64, DbErr> {
        match ip {
            Some(ip) => {
                self.execute(
                    "DELETE FROM lockouts WHERE email = ? AND ip = ?",
                    vec![email.into(), ip.into()],
                )
                .await
            }
            None => {
                self.execute(
                    "DELETE FROM lockouts WHERE email = ? AND ip NOT LIKE '+%'",
                    vec![email.into()],
                )
                .await
            }
        }
    }

    // ---- audit

    #[allow(clippy::too_many_arguments)]
    pub async fn audit(
        &self,
        event_type: &str,
        user_id: Option<&str>,
        email: Option<&str>,
        ip: Option<&str>,
        correlation_id: Option<&str>,
        detail: Option<&str>,
        now: i64,
    ) -> Result<(), DbErr> {
        self.execute(
            "INSERT INTO audit_events (event_type, user_id, email, ip, correlation_id, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            vec![
                event_type.into(),
                user_id.map(str::to_owned).into(),
                email.map(str::to_owned).into(),
                ip.map(str::to_owned).into(),
                correlation_id.map(str::to_owned).into(),
                detail.map(str::to_owned).into(),
                now.into(),
            ],
        )
        .await
        .map(|_| ())
    }
}
