//! The dataplane token the agent presents to cp-lite on every call.
//!
//! A token file is read again on every call, so a replaced token is used from the next call
//! without a restart; it is also watched (notify) so that a change is logged at once. An inline
//! token (`--dataplane-token`, `KUMA_DATAPLANE_RUNTIME_TOKEN`) stays in memory: unlike Kuma, the
//! agent never writes it to disk. Before use, a token passes Kuma's shape check (KUMA-FACTS 1.2);
//! its signature, expiry and claims are the control plane's business.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

/// How long the token file must stay quiet after a change before it is read again: editors and
/// `kubectl` write a file in several steps.
pub const TOKEN_WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// A dataplane token (a JWT). `Debug` is redacted: the token never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps token text, trimmed of surrounding whitespace as Kuma does.
    pub fn new(text: &str) -> Self {
        Token(text.trim().to_string())
    }

    /// The token itself, for the `authorization` metadata of a call.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the token is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenConfig {
    /// No token: only a control plane with dataplane token authentication disabled accepts the
    /// agent.
    None,
    /// `--dataplane-token-file` / `KUMA_DATAPLANE_RUNTIME_TOKEN_PATH`, read on every call.
    File(PathBuf),
    /// `--dataplane-token` / `KUMA_DATAPLANE_RUNTIME_TOKEN`, kept in memory only.
    Inline(Token),
}

/// What is wrong with a token (KUMA-FACTS 1.2, texts verbatim).
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    /// The token file cannot be read.
    #[error("could not read file {}: {cause}", path.display())]
    Read {
        /// The token file.
        path: PathBuf,
        /// Why; part of Kuma's text, so it is not repeated as a `source`.
        cause: io::Error,
    },
    /// The token file is empty.
    #[error("token under file {} is empty", path.display())]
    Empty {
        /// The token file.
        path: PathBuf,
    },
    /// A CR, LF or NUL inside the (trimmed) token.
    #[error("Token shouldn't contain line breaks within the token, only at the start or end")]
    LineBreaks,
    /// The token is not a JWT.
    #[error("not valid JWT token. Can't parse it.: {0}")]
    Unparseable(String),
    /// The JWT header is `null`.
    #[error("not valid JWT token. No Header.")]
    NoHeader,
    /// The JWT header has no `alg`.
    #[error("not valid JWT token. No Alg.")]
    NoAlg,
}

/// Why no token can be presented.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token fails the shape check; Kuma's wrapper text around the reason.
    #[error(
        "dataplane token is invalid, in Kubernetes you must mount a serviceAccount token, in universal you must start your proxy with a generated token.: {0}"
    )]
    // The inner text is part of Kuma's message, so it is not also reported as a source.
    Invalid(ShapeError),
    /// The token file's directory cannot be watched (the file is still read on every call).
    #[error("could not watch the dataplane token file {}", path.display())]
    Watch {
        /// The token file.
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

impl TokenError {
    fn invalid(error: ShapeError) -> Self {
        TokenError::Invalid(error)
    }
}

/// Checks the shape of a token as Kuma does before connecting: no inner line breaks, a JWT
/// whose header names an algorithm. The signature is not checked (the control plane does).
pub fn check_shape(token: &str) -> Result<(), ShapeError> {
    let token = token.trim();
    if token.contains(['\r', '\n', '\0']) {
        return Err(ShapeError::LineBreaks);
    }
    // Kuma reports golang-jwt's texts; the JWT crates at hand cannot tell an empty `alg` from a
    // missing or unknown one, so the few lines of unverified parsing are written out here.
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(ShapeError::Unparseable(
            "token is malformed: token contains an invalid number of segments".into(),
        ));
    }
    let header = decode_segment(parts[0], "header")?;
    decode_segment(parts[1], "claim")?;
    match header {
        serde_json::Value::Null => Err(ShapeError::NoHeader),
        serde_json::Value::Object(fields) => match fields.get("alg") {
            Some(serde_json::Value::String(alg)) if !alg.is_empty() => Ok(()),
            Some(serde_json::Value::String(_)) | None => Err(ShapeError::NoAlg),
            Some(other) => Err(ShapeError::Unparseable(format!(
                "token is malformed: could not JSON decode header: alg must be a string, got {other}"
            ))),
        },
        other => Err(ShapeError::Unparseable(format!(
            "token is malformed: could not JSON decode header: expected an object, got {other}"
        ))),
    }
}

fn decode_segment(segment: &str, what: &str) -> Result<serde_json::Value, ShapeError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|e| {
        ShapeError::Unparseable(format!(
            "token is malformed: could not base64 decode {what}: {e}"
        ))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ShapeError::Unparseable(format!(
            "token is malformed: could not JSON decode {what}: {e}"
        ))
    })
}

/// The agent's token: read (and shape-checked) on every call, watched for changes. Cheap to
/// clone; clones share the change counter.
#[derive(Debug, Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: TokenConfig,
    /// Bumped whenever the token file's content changes.
    changes: watch::Sender<u64>,
}

impl TokenSource {
    pub fn new(config: TokenConfig) -> Self {
        let (changes, _) = watch::channel(0);
        TokenSource {
            inner: Arc::new(Inner { config, changes }),
        }
    }

    /// The configured token file, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.config {
            TokenConfig::File(path) => Some(path),
            _ => None,
        }
    }

    /// Whether a token is configured at all.
    pub fn is_configured(&self) -> bool {
        self.inner.config != TokenConfig::None
    }

    /// The token to present now: the file is read again on every call. `None` when no token is
    /// configured.
    pub fn current(&self) -> Result<Option<Token>, TokenError> {
        match &self.inner.config {
            TokenConfig::None => Ok(None),
            TokenConfig::Inline(token) => {
                check_shape(token.expose()).map_err(TokenError::invalid)?;
                Ok(Some(token.clone()))
            }
            TokenConfig::File(path) => read_token_file(path).map(Some).map_err(TokenError::invalid),
        }
    }

    /// A receiver that changes whenever the token file changes (never for an inline token).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Watches the token file's directory (so that a file replaced by rename is seen too) until
    /// `shutdown`. Each change, once the file has been quiet for [`TOKEN_WATCH_DEBOUNCE`], is
    /// logged and bumps [`TokenSource::changes`]. Needs a Tokio runtime.
    pub fn spawn_watch(&self, shutdown: CancellationToken) -> Result<(), TokenError> {
        let Some(path) = self.path().map(Path::to_path_buf) else {
            return Ok(());
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (events, mut received) = mpsc::unbounded_channel::<()>();
        let watch_error = |source| TokenError::Watch {
            path: path.clone(),
            source,
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|event| changes_content(&event.kind)) {
                    // The receiver is gone only after shutdown.
                    let _ = events.send(());
                }
            })
            .map_err(watch_error)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;

        let source = self.clone();
        let span = info_span!("token_watch", path = %path.display());
        tokio::spawn(
            async move {
                // Dropping the watcher stops it: it lives as long as this task.
                let _watcher = watcher;
                let mut last = fingerprint(&path);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        event = received.recv() => if event.is_none() { return },
                    }
                    // Wait until the writes settle.
                    loop {
                        match tokio::time::timeout(TOKEN_WATCH_DEBOUNCE, received.recv()).await {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                    let now = fingerprint(&path);
                    if now == last {
                        continue;
                    }
                    last = now;
                    match source.current() {
                        Ok(_) => info!(
                            "dataplane token file changed; the new token is used from the next call"
                        ),
                        Err(error) => {
                            warn!(%error, "dataplane token file changed and is not usable")
                        }
                    }
                    source.inner.changes.send_modify(|n| *n += 1);
                }
            }
            .instrument(span),
        );
        debug!(dir = %dir.display(), "watching the dataplane token file");
        Ok(())
    }
}

/// Whether a watch event can mean new content. Opening and reading are events too (inotify
/// reports `OPEN`): reacting to them would make every token read, including the watcher's own,
/// wake the watcher again.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        // A writer closing the file: its content is complete now.
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// Reads and shape-checks a token file (Kuma's `ValidateTokenPath`).
fn read_token_file(path: &Path) -> Result<Token, ShapeError> {
    let read_error = |cause| ShapeError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    if text.is_empty() {
        return Err(ShapeError::Empty {
            path: path.to_path_buf(),
        });
    }
    let token = Token::new(&text);
    check_shape(token.expose())?;
    Ok(token)
}

/// A digest of the token file's content (not the token: it is never kept), to tell a real
/// change from unrelated events in the directory. `None` when the file cannot be read.
fn fingerprint(path: &Path) -> Option<Vec<u8>> {
    let content = std::fs::read(path).ok()?;
    Some(digest::digest(&digest::SHA256, &content).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JWT with the given header JSON; the signature is not checked by the agent.
    fn jwt(header: &str, claims: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    fn token_a() -> String {
        jwt(
            r#"{"alg":"RS256","kid":"1","typ":"JWT"}"#,
            r#"{"Name":"a"}"#,
        )
    }

    fn token_b() -> String {
        jwt(
            r#"{"alg":"RS256","kid":"2","typ":"JWT"}"#,
            r#"{"Name":"b"}"#,
        )
    }

    const WRAPPER: &str = "dataplane token is invalid, in Kubernetes you must mount a serviceAccount token, in universal you must start your proxy with a generated token.: ";

    fn file_error(content: Option<&str>) -> (PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        let source = TokenSource::new(TokenConfig::File(path.clone()));
        let error = source.current().unwrap_err().to_string();
        (path, error)
    }

    #[test]
    fn shape_errors_use_kuma_texts() {
        let (path, error) = file_error(None);
        assert_eq!(
            error,
            format!(
                "{WRAPPER}could not read file {}: No such file or directory (os error 2)",
                path.display()
            )
        );
        let (path, error) = file_error(Some(""));
        assert_eq!(
            error,
            format!("{WRAPPER}token under file {} is empty", path.display())
        );
        let (_, error) = file_error(Some("\nabc\ndef\n"));
        assert_eq!(
            error,
            format!(
                "{WRAPPER}Token shouldn't contain line breaks within the token, only at the start or end"
            )
        );
        let (_, error) = file_error(Some("not-a-jwt"));
        assert_eq!(
            error,
            format!(
                "{WRAPPER}not valid JWT token. Can't parse it.: token is malformed: token contains an invalid number of segments"
            )
        );
        let (_, error) = file_error(Some(&jwt(r#"{"typ":"JWT"}"#, "{}")));
        assert_eq!(error, format!("{WRAPPER}not valid JWT token. No Alg."));
        let (_, error) = file_error(Some(&jwt(r#"{"alg":""}"#, "{}")));
        assert_eq!(error, format!("{WRAPPER}not valid JWT token. No Alg."));
        let (_, error) = file_error(Some(&jwt("null", "{}")));
        assert_eq!(error, format!("{WRAPPER}not valid JWT token. No Header."));
        let (_, error) = file_error(Some("a.b.c"));
        assert!(
            error.starts_with(&format!(
                "{WRAPPER}not valid JWT token. Can't parse it.: token is malformed: could not "
            )),
            "{error}"
        );
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let (_, error) = file_error(Some("\n\n"));
        // A file of only line breaks is not empty, but holds no JWT.
        assert!(error.contains("invalid number of segments"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("\n  {}\n", token_a())).unwrap();
        let source = TokenSource::new(TokenConfig::File(path));
        assert_eq!(source.current().unwrap().unwrap().expose(), token_a());
    }

    #[test]
    fn file_is_read_again_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, token_a()).unwrap();
        let source = TokenSource::new(TokenConfig::File(path.clone()));
        assert_eq!(source.current().unwrap().unwrap().expose(), token_a());

        // Replaced by rename, as `kubectl` and careful scripts do.
        let staged = dir.path().join("token.new");
        std::fs::write(&staged, token_b()).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        assert_eq!(source.current().unwrap().unwrap().expose(), token_b());

        // Rewritten in place.
        std::fs::write(&path, token_a()).unwrap();
        assert_eq!(source.current().unwrap().unwrap().expose(), token_a());
    }

    #[test]
    fn inline_and_none() {
        let source = TokenSource::new(TokenConfig::Inline(Token::new(&token_a())));
        assert_eq!(source.current().unwrap().unwrap().expose(), token_a());
        assert!(source.path().is_none());

        let source = TokenSource::new(TokenConfig::Inline(Token::new("garbage")));
        assert!(source.current().is_err());

        let source = TokenSource::new(TokenConfig::None);
        assert!(source.current().unwrap().is_none());
        assert!(!source.is_configured());
    }

    #[test]
    fn debug_is_redacted() {
        let token = Token::new(&token_a());
        let config = TokenConfig::Inline(token.clone());
        for text in [format!("{token:?}"), format!("{config:?}")] {
            assert!(text.contains("<redacted>"), "{text}");
            assert!(!text.contains(&token_a()[..10]), "{text}");
        }
    }

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
        assert!(!changes_content(&notify::EventKind::Access(
            AccessKind::Open(AccessMode::Any)
        )));
        assert!(!changes_content(&notify::EventKind::Access(
            AccessKind::Close(AccessMode::Read)
        )));
        assert!(changes_content(&notify::EventKind::Access(
            AccessKind::Close(AccessMode::Write)
        )));
        assert!(changes_content(&notify::EventKind::Create(
            CreateKind::File
        )));
        assert!(changes_content(&notify::EventKind::Modify(ModifyKind::Any)));
        assert!(changes_content(&notify::EventKind::Remove(
            RemoveKind::File
        )));
    }

    #[tokio::test]
    async fn a_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, token_a()).unwrap();
        let source = TokenSource::new(TokenConfig::File(path.clone()));
        let shutdown = CancellationToken::new();
        source.spawn_watch(shutdown.clone()).unwrap();
        let mut changes = source.changes();

        // Unrelated files in the directory do not count as a change.
        std::fs::write(dir.path().join("other"), "x").unwrap();
        let unrelated = tokio::time::timeout(Duration::from_millis(600), changes.changed()).await;
        assert!(
            unrelated.is_err(),
            "an unrelated file counted as a token change"
        );

        let staged = dir.path().join("token.new");
        std::fs::write(&staged, token_b()).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the token change was not noticed")
            .unwrap();
        assert_eq!(*changes.borrow_and_update(), 1);
        assert_eq!(source.current().unwrap().unwrap().expose(), token_b());
        shutdown.cancel();
    }
}
