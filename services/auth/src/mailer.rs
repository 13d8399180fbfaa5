//! Sending verification emails. The built-in sender writes the message to the log; a real
//! mailer implements [`EmailSender`].

/// Delivers verification tokens.
pub trait EmailSender: Send + Sync + std::fmt::Debug {
    /// Sends `token` to `email` (the link's form is the mailer's business).
    fn send_verification(&self, email: &str, token: &str);

    /// Whether the message reaches the address's owner (false: it only goes to the log, where
    /// whoever reads logs could verify any address; refused in production).
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

    fn delivers(&self) -> bool {
        false
    }
}
