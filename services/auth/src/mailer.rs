//! Sending account emails (verification, password reset). The built-in sender writes the
//! message to the log; a real mailer implements [`EmailSender`].

/// Delivers single-use tokens to an address's owner.
pub trait EmailSender: Send + Sync + std::fmt::Debug {
    /// Sends an email verification `token` to `email` (the link's form is the mailer's
    /// business).
    fn send_verification(&self, email: &str, token: &str);

    /// Sends a password reset `token` to `email`; it is confirmed with
    /// `POST /api/v1/auth/password-reset/confirm {"token","password"}` within
    /// `AUTH_PASSWORD_RESET_TTL`. Called off the request path (on a blocking thread), so a slow
    /// mailer never shows in the answer's timing.
    fn send_password_reset(&self, email: &str, token: &str);

    /// Whether the message reaches the address's owner (false: it only goes to the log, where
    /// whoever reads logs could verify any address or reset any password; refused in
    /// production).
    fn delivers(&self) -> bool {
        true
    }
}

/// Writes the message to the log (development and tests).
#[derive(Debug, Default)]
pub struct LogSender;

impl EmailSender for LogSender {
    fn send_verification(&self, email: &str, token: &str) {
        tracing::info!(
            email,
            token,
            "email_verification: POST /api/v1/auth/verify-email {{\"token\":\"…\"}}"
        );
    }

    fn send_password_reset(&self, email: &str, token: &str) {
        tracing::info!(
            email,
            token,
            "password_reset: POST /api/v1/auth/password-reset/confirm {{\"token\":\"…\",\"password\":\"…\"}}"
        );
    }

    fn delivers(&self) -> bool {
        false
    }
}
