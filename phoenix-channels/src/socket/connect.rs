//! What each connect attempt sends: the URL with its params, the headers and the auth token,
//! fixed or from a provider; and how URLs are shown in logs (redacted).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use url::Url;

use crate::error::BuildError;
use crate::proto::DisconnectReason;
use crate::transport::ConnectRequest;

/// An error from a [`ConnectParamsProvider`].
pub type ProviderError = Box<dyn std::error::Error + Send + Sync>;

/// The connect params, headers and auth token of one connect attempt.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ConnectParams {
    /// Query params of the connect URL (the socket's `connect/3` params).
    pub params: Vec<(String, String)>,
    /// HTTP headers of the upgrade request.
    pub headers: Vec<(String, String)>,
    /// A token sent in the `Sec-WebSocket-Protocol` header (Phoenix ≥ 1.8 `auth_token`).
    pub auth_token: Option<String>,
}

impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Params and headers often carry credentials: show names only.
        let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        f.debug_struct("ConnectParams")
            .field("params", &names(&self.params))
            .field("headers", &names(&self.headers))
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl ConnectParams {
    /// No params.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a query param.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the auth token.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }
}

/// Provides fresh connect params on every connect attempt (e.g. a token that expires).
///
/// Any `Fn() -> impl Future<Output = Result<ConnectParams, ProviderError>>` is a provider:
///
/// ```
/// use phoenix_channels::{ConnectParams, Socket};
///
/// # async fn fetch_token() -> Result<String, std::io::Error> { Ok("t".into()) }
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let builder = Socket::builder("wss://example.com/socket").params_provider(|| async {
///     let token = fetch_token().await?;
///     Ok(ConnectParams::new().param("token", token))
/// });
/// # Ok(()) }
/// ```
#[async_trait]
pub trait ConnectParamsProvider: Send + Sync + 'static {
    /// The params of the next connect attempt. An error fails the attempt, which counts as a
    /// failed connect ([`DisconnectReason::Provider`]) for the reconnect policy.
    async fn connect_params(&self) -> Result<ConnectParams, ProviderError>;
}

#[async_trait]
impl<F, Fut> ConnectParamsProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ConnectParams, ProviderError>> + Send,
{
    async fn connect_params(&self) -> Result<ConnectParams, ProviderError> {
        (self)().await
    }
}

/// How each connect attempt's request is made: the fixed parts, plus the provider's.
pub(crate) struct ConnectSetup {
    pub(super) url: Url,
    pub(super) fixed: ConnectParams,
    pub(super) provider: Option<Arc<dyn ConnectParamsProvider>>,
    /// The serializer's `vsn`, sent on every connect.
    pub(super) vsn: &'static str,
}

impl ConnectSetup {
    pub(crate) async fn request(&self) -> Result<ConnectRequest, DisconnectReason> {
        let dynamic = match &self.provider {
            Some(p) => p
                .connect_params()
                .await
                .map_err(|e| DisconnectReason::Provider(e.to_string()))?,
            None => ConnectParams::default(),
        };
        let mut url = self.url.clone();
        {
            let params: Vec<&(String, String)> = self
                .fixed
                .params
                .iter()
                .chain(dynamic.params.iter())
                .collect();
            let mut query = url.query_pairs_mut();
            // The serializer's `vsn` is the one sent: another would make the server speak a
            // format this socket does not read.
            for (name, value) in params.iter().filter(|(name, _)| name != "vsn") {
                query.append_pair(name, value);
            }
            query.append_pair("vsn", self.vsn);
        }
        let mut request = ConnectRequest::new(url);
        request.headers = self
            .fixed
            .headers
            .iter()
            .chain(dynamic.headers.iter())
            .cloned()
            .collect();
        if let Some(token) = dynamic.auth_token.or_else(|| self.fixed.auth_token.clone()) {
            let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(token);
            request.protocols = vec!["phoenix".into(), format!("base64url.bearer.phx.{encoded}")];
        }
        Ok(request)
    }
}

/// `endpoint` with the scheme mapped to `ws`/`wss` and `/websocket` appended to the path.
pub(super) fn websocket_url(endpoint: &str) -> Result<Url, BuildError> {
    let mut url =
        Url::parse(endpoint).map_err(|e| BuildError::InvalidUrl(format!("{endpoint}: {e}")))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(BuildError::InvalidUrl(format!(
                "unsupported scheme `{other}`"
            )));
        }
    };
    if url.set_scheme(scheme).is_err() || url.host_str().is_none() {
        return Err(BuildError::InvalidUrl(format!("{endpoint}: no host")));
    }
    if !url.path().ends_with("/websocket") {
        let path = format!("{}/websocket", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

/// Query params whose values are shown in logs and `Debug` output; every other param's value
/// is redacted, since any name (`token`, `sig`, `jwt`, `session`, ...) may carry a credential.
pub const SHOWN_PARAMS: [&str; 1] = ["vsn"];

/// What stands for a hidden value in logs and `Debug` output.
const REDACTED: &str = "REDACTED";

/// The URL for logs and `Debug`: user name and password replaced, and every query value but
/// those of [`SHOWN_PARAMS`] replaced.
///
/// ```
/// use phoenix_channels::socket::redact_url;
/// let url = url::Url::parse("wss://ada:pw@h/socket/websocket?sig=abc&vsn=2.0.0").unwrap();
/// assert_eq!(redact_url(&url), "wss://REDACTED:REDACTED@h/socket/websocket?sig=REDACTED&vsn=2.0.0");
/// ```
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if !url.username().is_empty() {
        let _ = shown.set_username(REDACTED);
    }
    if url.password().is_some() {
        let _ = shown.set_password(Some(REDACTED));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let value = if SHOWN_PARAMS.contains(&k.as_ref()) {
                    v.into_owned()
                } else {
                    REDACTED.to_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if url.fragment().is_some() {
        shown.set_fragment(Some(REDACTED));
    }
    shown.to_string()
}

/// An endpoint as given to a builder, for logs and `Debug`: redacted like [`redact_url`], and
/// not shown at all if it is not a URL (it could be anything).
///
/// ```
/// use phoenix_channels::socket::redact_endpoint;
/// assert_eq!(redact_endpoint("ws://h/socket?token=abc"), "ws://h/socket?token=REDACTED");
/// assert_eq!(redact_endpoint("h/socket?token=abc"), "<not a URL, 18 bytes>");
/// ```
pub fn redact_endpoint(endpoint: &str) -> String {
    match Url::parse(endpoint) {
        Ok(url) => redact_url(&url),
        Err(_) => format!("<not a URL, {} bytes>", endpoint.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Socket;

    #[test]
    fn endpoint_urls_get_websocket_and_ws_schemes() {
        let url = |e: &str| websocket_url(e).map(|u| u.to_string());
        assert_eq!(
            url("ws://h:4000/socket").unwrap(),
            "ws://h:4000/socket/websocket"
        );
        assert_eq!(
            url("https://h/socket/").unwrap(),
            "wss://h/socket/websocket"
        );
        assert_eq!(
            url("ws://h/socket/websocket").unwrap(),
            "ws://h/socket/websocket"
        );
        assert!(matches!(
            websocket_url("ftp://h/x"),
            Err(BuildError::InvalidUrl(_))
        ));
        assert!(matches!(
            websocket_url("not a url"),
            Err(BuildError::InvalidUrl(_))
        ));
    }

    #[tokio::test]
    async fn requests_carry_params_vsn_headers_and_the_token_subprotocol() {
        let setup = ConnectSetup {
            vsn: "2.0.0",
            url: websocket_url("ws://h/socket").unwrap(),
            fixed: ConnectParams::new().param("a", "1").header("x-app", "demo"),
            provider: Some(Arc::new(|| async {
                Ok(ConnectParams::new()
                    .param("token", "t o")
                    .auth_token("abc?"))
            })),
        };
        let request = setup.request().await.unwrap();
        assert_eq!(
            request.url.as_str(),
            "ws://h/socket/websocket?a=1&token=t+o&vsn=2.0.0"
        );
        assert_eq!(request.headers, [("x-app".to_owned(), "demo".to_owned())]);
        // Standard alphabet, no padding ("abc?" → "YWJjPw").
        assert_eq!(
            request.protocols,
            ["phoenix", "base64url.bearer.phx.YWJjPw"]
        );
        assert_eq!(
            redact_url(&request.url),
            "ws://h/socket/websocket?a=REDACTED&token=REDACTED&vsn=2.0.0"
        );
    }

    #[test]
    fn every_query_value_but_the_allowed_ones_and_every_password_are_redacted() {
        let url = Url::parse(
            "ws://user:pa55@h:4000/socket/websocket?sig=s1&jwt=j2&session=s3&Token=t4&x=y5&vsn=2.0.0#f6",
        )
        .unwrap();
        let shown = redact_url(&url);
        for secret in ["user", "pa55", "s1", "j2", "s3", "t4", "y5", "f6"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(
            shown,
            "ws://REDACTED:REDACTED@h:4000/socket/websocket?sig=REDACTED&jwt=REDACTED&session=REDACTED&Token=REDACTED&x=REDACTED&vsn=2.0.0#REDACTED"
        );
        assert_eq!(
            redact_url(&Url::parse("ws://h/socket").unwrap()),
            "ws://h/socket"
        );
    }

    #[test]
    fn builder_debug_never_shows_the_endpoint_credentials() {
        let builder = Socket::builder("wss://ada:s3cret@h/socket?sig=abc123&vsn=2.0.0")
            .param("token", "t0ken")
            .auth_token("b3arer");
        let shown = format!("{builder:?}");
        for secret in ["ada", "s3cret", "abc123", "t0ken", "b3arer"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let shown = format!("{:?}", Socket::builder("ws//token=s3cret"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[tokio::test]
    async fn a_failing_provider_fails_the_attempt_with_its_message() {
        let setup = ConnectSetup {
            vsn: "2.0.0",
            url: websocket_url("ws://h/socket").unwrap(),
            fixed: ConnectParams::new(),
            provider: Some(Arc::new(|| async {
                Err::<ConnectParams, ProviderError>("no token".into())
            })),
        };
        assert_eq!(
            setup.request().await.unwrap_err(),
            DisconnectReason::Provider("no token".into())
        );
    }
}
