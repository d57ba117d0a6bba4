//! Why a configuration cannot work: a setting's value, or a file a setting
//! names (a verifier key, a TLS certificate). Found at start-up, or when a
//! watched file is reloaded, and never a request's fault: its own type, so a
//! setting is never reported as a request's invalid argument.

/// A setting that cannot work. The message names the setting (its flag or
/// environment variable) and what is wrong; it never holds a secret's value.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {setting}: {problem}")]
pub struct ConfigError {
    setting: String,
    problem: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            problem: problem.into(),
        }
    }

    /// The setting at fault (a flag name such as `--tls-cert`).
    pub fn setting(&self) -> &str {
        &self.setting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_setting_and_the_problem() {
        let e = ConfigError::new("--tls-cert", "holds no certificate");
        assert_eq!(e.setting(), "--tls-cert");
        assert_eq!(
            e.to_string(),
            "configuration: --tls-cert: holds no certificate"
        );
    }
}
