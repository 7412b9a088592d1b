//! Who connects: the device id and the token.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use phoenix_channels::ProviderError;
use rand::Rng as _;

/// A device id: `dev_` + base64url of 8 random bytes, unless chosen.
///
/// ```no_run
/// use dust_connection::DeviceId;
/// // The same id across restarts of the app:
/// let id = DeviceId::load_or_generate("./.dust-device-id")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// A new random id.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!(
            "dev_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// This id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id stored in `file`, or a new one written there (so a device keeps its id).
    pub fn load_or_generate(file: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let file = file.as_ref();
        match std::fs::read_to_string(file) {
            Ok(text) if !text.trim().is_empty() => Ok(Self(text.trim().to_owned())),
            Ok(_) => Self::write_new(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::write_new(file),
            Err(e) => Err(e),
        }
    }

    fn write_new(file: &std::path::Path) -> std::io::Result<Self> {
        let id = Self::generate();
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, &id.0)?;
        Ok(id)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Provides the token on every connect attempt (e.g. a token that rotates).
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// The token for the next connect attempt.
    async fn token(&self) -> Result<String, ProviderError>;
}

#[async_trait]
impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, ProviderError>> + Send,
{
    async fn token(&self) -> Result<String, ProviderError> {
        (self)().await
    }
}

pub(crate) enum TokenSource {
    Fixed(String),
    Provider(Arc<dyn TokenProvider>),
}
