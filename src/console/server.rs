//! The console's HTTP server (axum, HTTP/1.1, loopback only).
//!
//! Every request passes [`guard`]: its `Host` must be the console's own address (a page
//! of another site that rebinds a name to 127.0.0.1 is refused, 421), and a request that
//! changes anything must come from the console's own origin (`Origin`, 403) and carry the
//! session's CSRF token (403). Pages need the session cookie (`HttpOnly`,
//! `SameSite=Strict`), which only a one-time login link sets; without it a page says how
//! to log in and shows no data (401). Every response carries a Content-Security-Policy
//! that allows only the console's own stylesheet (no script, no other origin, no frame)
//! and `Cache-Control: no-store`. Logins, refused logins, logouts and every action go to
//! the audit trail (event `console`).
//!
//! Live updates: `/events` is a Server-Sent Events stream of the agent's [`Live`] state
//! (a delivery's bytes, a signal on every queue change); the console's one script
//! (`/static/console.js`, same origin) moves the progress bars and reads the page again
//! after a change. Those reads carry `X-Conduit-Live` and, like the stream, do not count
//! as activity: an unattended page does not keep its session open.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::agent::live::{Live, Update};
use crate::agent::queue::Queue;
use crate::audit::Audit;
use crate::console::login::{self, Sessions};
use crate::console::pages;
use crate::crypto::identity::{Identity, PublicKey};
use crate::peers::AddressBook;

/// The session cookie's name.
pub const COOKIE: &str = "conduit_console";

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                       style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// The header of a page read again by the console's script after a live update.
const LIVE_HEADER: &str = "x-conduit-live";

/// Live update streams open at once (every session and tab together).
pub const MAX_STREAMS: usize = 16;

/// How often an open stream checks that its session is still open.
const STREAM_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest form of the Send page (all its files).
const MAX_UPLOAD: usize = 64 << 30;

/// Audit records the audit page shows.
const LATEST_RECORDS: usize = 50;

/// The pages a login link may lead to (`next`).
const PAGES: &[&str] = &["/outbox", "/send", "/inbox", "/peers", "/audit", "/health"];

/// What the console serves from.
pub struct Console {
    /// The endpoint's home (login tokens).
    pub home: PathBuf,
    /// The address it listens on.
    pub listen: SocketAddr,
    /// The agent's queue.
    pub queue_path: PathBuf,
    /// The address book.
    pub book: AddressBook,
    /// The identity (for the audit chain's key).
    pub identity: Identity,
    /// The audit trail.
    pub audit: Audit,
    /// Outbox and inbox folders (for disk space).
    pub folders: Vec<(String, PathBuf)>,
    /// The relay, if one is configured.
    pub relay: Option<String>,
    /// The open sessions.
    pub sessions: Sessions,
    /// How the queue stores file names (as they are, or keyed hashes in names mode
    /// hash), and the folders whose entries give a hash its name back.
    pub names: (crate::audit::names::Names, Vec<PathBuf>),
    /// The agent's deliveries in flight, queue changes and relay state.
    pub live: Arc<Live>,
    /// Permits for live update streams ([`MAX_STREAMS`]).
    pub streams: Arc<tokio::sync::Semaphore>,
}

impl Console {
    /// Whether `host` (a Host header) names this console.
    fn is_own_host(&self, host: &str) -> bool {
        let port = self.listen.port();
        host == self.listen.to_string()
            || (self.listen.ip().is_loopback() && host == format!("localhost:{port}"))
    }

    /// Whether `origin` (an Origin header) is this console's.
    fn is_own_origin(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|h| self.is_own_host(h))
    }

    /// The session of a request: its cookie and CSRF token.
    fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        self.session_touching(headers, !headers.contains_key(LIVE_HEADER))
    }

    /// [`Console::session`]; `touch`: the request counts as activity (a live update
    /// does not).
    fn session_touching(&self, headers: &HeaderMap, touch: bool) -> Option<(String, String)> {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))?
            .to_string();
        let csrf = if touch {
            self.sessions.check(&cookie)?
        } else {
            self.sessions.peek(&cookie)?
        };
        Some((cookie, csrf))
    }

    /// The name a person reads for a stored name: itself, or in names mode hash the name
    /// of the entry of an outbox, its `sent/` or `failed/`, or an inbox whose keyed hash
    /// it is (entries are listed, never opened); a hash whose file is gone stays hidden.
    fn resolver(&self) -> impl Fn(&str) -> String + use<> {
        let (names, dirs) = &self.names;
        let mut known = HashMap::new();
        if names.hides() {
            for dir in dirs {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for e in entries.flatten().take(100_000) {
                    if let Ok(name) = e.file_name().into_string() {
                        if let Some(h) = names.hash(&name) {
                            known.insert(h, name);
                        }
                    }
                }
            }
        }
        let hides = names.hides();
        move |stored: &str| match known.get(stored) {
            Some(real) => real.clone(),
            None if hides => format!("(name hidden, #{})", stored.get(..12).unwrap_or(stored)),
            None => stored.to_string(),
        }
    }

    /// The address book as it is on disk now (as the agent started, if it cannot be read).
    fn book_now(&self) -> AddressBook {
        AddressBook::load(&crate::home::Home::at(&self.home)).unwrap_or_else(|_| self.book.clone())
    }

    fn note(&self, what: &str) {
        let _ = self.audit.console(what);
    }
}

/// Serves the console on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, console: Arc<Console>) {
    let app = Router::new()
        .route("/", get(|| async { Redirect::to("/outbox") }))
        .route("/login", get(login_page))
        .route("/logout", post(logout))
        .route("/outbox", get(outbox))
        .route("/outbox/{id}/{action}", post(item_action))
        // Only the Send form may be large (its files stream to disk); every other form
        // keeps axum's 2 MB default.
        .route(
            "/send",
            get(send_page)
                .post(send_files)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/inbox", get(inbox))
        .route("/peers", get(peers))
        .route("/peers/add", post(add_peer))
        .route("/events", get(events))
        .route("/audit", get(audit))
        .route("/audit/export", get(audit_export))
        .route("/health", get(health))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(Arc::clone(&console), guard))
        .with_state(console);
    let _ = axum::serve(listener, app).await;
}

/// The checks of every request, and the headers of every response.
async fn guard(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    // Decided before the request moves on (a borrow of it may not live across an await).
    let (own_host, own_origin, reads) = {
        let header_of = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        (
            header_of(header::HOST).is_some_and(|h| c.is_own_host(h)),
            header_of(header::ORIGIN).is_some_and(|o| c.is_own_origin(o)),
            matches!(*req.method(), Method::GET | Method::HEAD),
        )
    };
    let mut res = if !own_host {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "unexpected Host header: open the console through the link `conduit console url` prints",
        )
            .into_response()
    } else if !reads && !own_origin {
        (
            StatusCode::FORBIDDEN,
            "a change must come from the console's own pages",
        )
            .into_response()
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

fn page(status: StatusCode, markup: maud::Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn not_logged_in() -> Response {
    page(
        StatusCode::UNAUTHORIZED,
        pages::message("Not logged in", "This page needs a console session."),
    )
}

fn failed(what: &str, e: impl std::fmt::Display) -> Response {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::message("Error", &format!("{what}: {e}")),
    )
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}

/// The live update stream (Server-Sent Events): `progress` with an item's bytes and
/// total, `changed` when the queue changed (read the page again). It ends when the
/// session does.
async fn events(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    // A browser opens the stream again by itself after a break: not activity either.
    let Some((cookie, _)) = c.session_touching(&headers, false) else {
        return not_logged_in();
    };
    let Ok(permit) = Arc::clone(&c.streams).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live update streams: close some console tabs",
        )
            .into_response();
    };
    let updates = c.live.subscribe();
    let stream = futures_util::stream::unfold(
        (updates, c, cookie, permit),
        |(mut updates, c, cookie, permit)| async move {
            loop {
                let next = tokio::time::timeout(STREAM_CHECK, updates.recv()).await;
                c.sessions.peek(&cookie)?;
                let event = match next {
                    Err(_) => continue,
                    Ok(Ok(Update::Progress { item, bytes, total })) => SseEvent::default()
                        .event("progress")
                        // (item ids are hex: nothing to escape)
                        .data(format!(
                            r#"{{"item":"{item}","bytes":{bytes},"total":{total}}}"#
                        )),
                    Ok(Ok(Update::Changed))
                    | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                        SseEvent::default().event("changed").data("{}")
                    }
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
                };
                return Some((Ok::<_, Infallible>(event), (updates, c, cookie, permit)));
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn login_page(
    State(c): State<Arc<Console>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token = q.get("token").map(String::as_str).unwrap_or_default();
    if let Err(why) = login::redeem_token(&c.home, token) {
        c.note(&format!("login refused: {why}"));
        return page(
            StatusCode::FORBIDDEN,
            pages::message("Login refused", &why.to_string()),
        );
    }
    let (cookie, _) = match c.sessions.open() {
        Ok(s) => s,
        Err(e) => return failed("no session", e),
    };
    c.note("login");
    // Where to go once logged in: one of the console's pages, nothing else.
    let next = q
        .get("next")
        .map(String::as_str)
        .filter(|n| PAGES.contains(n))
        .unwrap_or("/outbox");
    let set = format!(
        "{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        login::SESSION_MAX.as_secs()
    );
    let mut res = Redirect::to(next).into_response();
    *res.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&set) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// Why a change was not made.
enum Refused {
    /// No live session.
    NotLoggedIn,
    /// The form lacks the session's CSRF token.
    Csrf,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NotLoggedIn => not_logged_in(),
            Refused::Csrf => (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response(),
        }
    }
}

/// The session of a change (its cookie and CSRF token), if its form carries the
/// session's CSRF token.
fn changing(
    c: &Console,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, String), Refused> {
    let Some((cookie, csrf)) = c.session(headers) else {
        return Err(Refused::NotLoggedIn);
    };
    let given = form.get("csrf").map(String::as_str).unwrap_or_default();
    if !login::same_secret(given, &csrf) {
        return Err(Refused::Csrf);
    }
    Ok((cookie, csrf))
}

async fn logout(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let cookie = match changing(&c, &headers, &form) {
        Ok((cookie, _)) => cookie,
        Err(refused) => return refused.into_response(),
    };
    c.sessions.close(&cookie);
    c.note("logout");
    let mut res = page(
        StatusCode::OK,
        pages::message("Logged out", "The session is closed."),
    );
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("conduit_console=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    res
}

fn page_number(q: &HashMap<String, String>) -> usize {
    q.get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0)
        .min(1_000_000)
}

async fn outbox(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some((_, csrf)) = c.session(&headers) else {
        return not_logged_in();
    };
    let n = page_number(&q);
    let read = || -> Result<_, crate::agent::queue::QueueError> {
        let queue = Queue::open(&c.queue_path)?;
        let mut items = queue.list_page(n * pages::PAGE, pages::PAGE + 1)?;
        let more = items.len() > pages::PAGE;
        items.truncate(pages::PAGE);
        Ok((items, queue.counts()?, more))
    };
    let real = c.resolver();
    match read().map(|(mut items, counts, more)| {
        for i in &mut items {
            i.name = real(&i.name);
        }
        (items, counts, more)
    }) {
        Ok((items, counts, more)) => {
            let progress: HashMap<&str, (u64, u64)> = items
                .iter()
                .filter_map(|i| Some((i.id.as_str(), c.live.progress_of(&i.id)?)))
                .collect();
            page(
                StatusCode::OK,
                pages::outbox(&items, &counts, &progress, n, more, &csrf),
            )
        }
        Err(e) => failed("the queue", e),
    }
}

async fn item_action(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = changing(&c, &headers, &form) {
        return refused.into_response();
    }
    let done = Queue::open(&c.queue_path).and_then(|mut q| match action.as_str() {
        "retry" => q.retry_now(&id),
        "cancel" => q.cancel(&id),
        _ => Err(crate::agent::queue::QueueError::NoItem(id.clone())),
    });
    match done {
        Ok(item) => {
            c.note(&format!("{action} item {}", item.id));
            c.live.changed();
            let mut res = Redirect::to("/outbox").into_response();
            *res.status_mut() = StatusCode::SEE_OTHER;
            res
        }
        Err(e) => page(
            StatusCode::BAD_REQUEST,
            pages::message("Not done", &format!("{action} {id}: {e}")),
        ),
    }
}

async fn inbox(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some((_, csrf)) = c.session(&headers) else {
        return not_logged_in();
    };
    let n = page_number(&q);
    let rows = Queue::open(&c.queue_path)
        .and_then(|queue| queue.received_page(n * pages::PAGE, pages::PAGE + 1));
    let mut rows = match rows {
        Ok(r) => r,
        Err(e) => return failed("the queue", e),
    };
    let more = rows.len() > pages::PAGE;
    rows.truncate(pages::PAGE);
    let real = c.resolver();
    for r in &mut rows {
        r.received.name = real(&r.received.name);
    }
    let arrived: Vec<pages::Arrived<'_>> = rows
        .iter()
        .map(|row| {
            let key = PublicKey::parse(&row.sender).ok();
            pages::Arrived {
                row,
                from: key
                    .as_ref()
                    .and_then(|k| c.book.find_by_key(k))
                    .map(|p| p.name.as_str()),
                fingerprint: key.map(|k| k.fingerprint().to_string()),
            }
        })
        .collect();
    let arriving: Vec<pages::Incoming> = c
        .live
        .arrivals()
        .into_iter()
        .map(|(id, a)| pages::Incoming {
            from: c.book.find_by_key(&a.from).map(|p| p.name.clone()),
            fingerprint: a.from.fingerprint().to_string(),
            name: a.name,
            progress: c.live.progress_of(&id).unwrap_or((0, a.total)),
            id,
        })
        .collect();
    page(
        StatusCode::OK,
        pages::inbox(&arriving, &arrived, n, more, &csrf),
    )
}

/// The address book as it is on disk now (peers added since the agent started are
/// marked), with each peer's last completed transfer.
async fn peers(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = c.session(&headers) else {
        return not_logged_in();
    };
    page(StatusCode::OK, peers_page(&c, &csrf, None))
}

fn peers_page(c: &Console, csrf: &str, note: Option<(&str, bool)>) -> maud::Markup {
    let book = match AddressBook::load(&crate::home::Home::at(&c.home)) {
        Ok(b) => b,
        Err(e) => return pages::message("Error", &format!("the address book: {e}")),
    };
    let seen = Queue::open(&c.queue_path)
        .and_then(|q| q.peers_seen())
        .unwrap_or_default();
    let rows: Vec<pages::PeerRow> = book
        .peers()
        .iter()
        .map(|p| pages::PeerRow {
            name: p.name.clone(),
            fingerprint: p.key.fingerprint().to_string(),
            fips: p.fips.is_some(),
            path: p.path.map(|x| x.name()),
            seen: seen.get(&p.key.to_string()).cloned(),
            new: c.book.find_by_key(&p.key).is_none(),
        })
        .collect();
    pages::peers(&rows, note, csrf)
}

/// The token of the second step of adding `name` with `key` and `fips` in the session of
/// `csrf`: HMAC-SHA256 under a key of this console process (random, never shown), so
/// that only a form the first step rendered can confirm. `None` without random bytes.
fn comparison_token(csrf: &str, name: &str, key: &str, fips: &str) -> Option<String> {
    static KEY: std::sync::OnceLock<Option<aws_lc_rs::hmac::Key>> = std::sync::OnceLock::new();
    let mac = KEY
        .get_or_init(|| {
            aws_lc_rs::hmac::Key::generate(
                aws_lc_rs::hmac::HMAC_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
            )
            .ok()
        })
        .as_ref()?;
    let mut ctx = aws_lc_rs::hmac::Context::with_key(mac);
    for part in [csrf, name, key, fips] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    Some(crate::audit::record::hex(ctx.sign().as_ref()))
}

/// Adding a peer, in two steps: the form's name and key are checked and the key's
/// fingerprint shown, to be compared with the one the other machine's `conduit id`
/// shows (by telephone or in person); only a second POST that confirms the comparison
/// writes the address book.
async fn add_peer(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = match changing(&c, &headers, &form) {
        Ok((_, csrf)) => csrf,
        Err(refused) => return refused.into_response(),
    };
    let field = |n: &str| form.get(n).map(|v| v.trim()).unwrap_or_default();
    let (name, key_text, fips_text) = (field("name"), field("key"), field("fips"));
    let refuse = |why: String| {
        page(
            StatusCode::BAD_REQUEST,
            peers_page(&c, &csrf, Some((&why, false))),
        )
    };
    let key = match PublicKey::parse(key_text) {
        Ok(k) => k,
        Err(e) => {
            return refuse(format!(
                "Not added: the public key is not valid ({e}). Paste the whole key that `conduit id` prints on the other machine (cpk1...)."
            ));
        }
    };
    let fips = match fips_text {
        "" => None,
        t => match crate::crypto::fips_identity::FipsPin::parse(t) {
            Ok(p) => Some(p),
            Err(e) => return refuse(format!("Not added: the FIPS pin is not valid ({e}).")),
        },
    };
    let home = crate::home::Home::at(&c.home);
    let mut book = match AddressBook::load(&home) {
        Ok(b) => b,
        Err(e) => return failed("the address book", e),
    };
    let added = book.add(name, key).and_then(|()| book.set_fips(name, fips));
    if let Err(e) = added {
        return refuse(format!("Not added: {}.", pages::shown(&e.to_string())));
    }
    // The second step must follow the first: its token is the console's MAC over what
    // the first step showed, in this session.
    let Some(shown) = comparison_token(&csrf, name, key_text, fips_text) else {
        return failed("adding a peer", "no random bytes for the console's key");
    };
    let confirmed = form.get("compared").map(String::as_str) == Some("yes");
    let stepped = login::same_secret(
        form.get("step").map(String::as_str).unwrap_or_default(),
        &shown,
    );
    if !confirmed || !stepped {
        let fingerprint = key.fingerprint().to_string();
        return page(
            StatusCode::OK,
            pages::compare_peer(name, key_text, fips_text, &fingerprint, &shown, &csrf),
        );
    }
    if let Err(e) = book.save() {
        return failed("the address book", e);
    }
    c.note(&format!("peer added {name} {}", key.fingerprint()));
    let done = format!(
        "{name} was added to the address book ({}). The Send page and the command line can send to it now; the running agent takes transfers from it, and folder rules that name it, after its next start.",
        key.fingerprint()
    );
    page(StatusCode::OK, peers_page(&c, &csrf, Some((&done, true))))
}

async fn audit(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = c.session(&headers) else {
        return not_logged_in();
    };
    let home = crate::home::Home::at(&c.home);
    let key = crate::audit::chain_key(&c.identity);
    let checked = tokio::task::spawn_blocking(move || {
        let dir = crate::audit::dir(&home);
        let verified = crate::audit::verify::verify(&dir, &key)?;
        let mut all = crate::audit::verify::show(&dir, &crate::audit::verify::Filter::default())?;
        let latest = all.split_off(all.len().saturating_sub(LATEST_RECORDS));
        Ok::<_, crate::audit::AuditError>((verified, latest))
    })
    .await;
    let mut latest = Vec::new();
    let checked = checked.map(|r| {
        r.map(|(verified, mut l)| {
            l.reverse();
            latest = l;
            verified
        })
    });
    let (text, ok) = match checked {
        Ok(Ok(Ok(v))) => (
            format!(
                "{} records, last at {}",
                v.records,
                v.last_ts.unwrap_or_else(|| "-".into())
            ),
            true,
        ),
        Ok(Ok(Err(b))) => (
            format!(
                "record {} ({} line {}): {}",
                b.record, b.file, b.line, b.reason
            ),
            false,
        ),
        Ok(Err(e)) => (format!("cannot be read: {e}"), false),
        Err(e) => (format!("not checked: {e}"), false),
    };
    page(StatusCode::OK, pages::audit(&text, ok, &latest, &csrf))
}

/// Every record of the audit log, as `conduit audit show --json` prints them.
async fn audit_export(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.session(&headers).is_none() {
        return not_logged_in();
    }
    let home = crate::home::Home::at(&c.home);
    let read = tokio::task::spawn_blocking(move || {
        crate::audit::verify::show(
            &crate::audit::dir(&home),
            &crate::audit::verify::Filter::default(),
        )
    })
    .await;
    let records = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return failed("the audit log", e),
        Err(e) => return failed("the audit log", e),
    };
    let mut body = String::new();
    for r in &records {
        if let Ok(line) = serde_json::to_string(r) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    c.note("audit export");
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"conduit-audit.jsonl\"",
            ),
        ],
        body,
    )
        .into_response()
}

async fn health(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = c.session(&headers) else {
        return not_logged_in();
    };
    let mut checks = Vec::new();
    match Queue::open(&c.queue_path).and_then(|q| q.counts()) {
        Ok(n) => {
            checks.push(pages::Check {
                what: "queue".into(),
                value: format!(
                    "{} waiting, {} sending, {} failed",
                    n.queued, n.sending, n.failed
                ),
                ok: n.failed == 0,
            });
            checks.push(pages::Check {
                what: "oldest waiting item".into(),
                value: n
                    .oldest_pending_secs
                    .map_or_else(|| "none".into(), |s| format!("{s} s")),
                ok: n.oldest_pending_secs.is_none_or(|s| s < 3600),
            });
        }
        Err(e) => checks.push(pages::Check {
            what: "queue".into(),
            value: e.to_string(),
            ok: false,
        }),
    }
    let (value, ok) = match (&c.relay, c.live.relay_state()) {
        (None, _) => ("none configured".into(), true),
        (Some(relay), None) => (
            format!(
                "{} (not contacted since the agent started)",
                pages::shown(relay)
            ),
            true,
        ),
        (Some(relay), Some(r)) => (
            format!(
                "{}: {} at {} ({})",
                pages::shown(relay),
                if r.reachable {
                    "answered"
                } else {
                    "NOT reachable"
                },
                pages::when(r.at_ms),
                r.detail
            ),
            r.reachable,
        ),
    };
    checks.push(pages::Check {
        what: "relay".into(),
        value,
        ok,
    });
    for (what, dir) in &c.folders {
        let (value, ok) = match rustix::fs::statvfs(dir) {
            Ok(s) => {
                let free = s.f_bavail.saturating_mul(s.f_frsize);
                (
                    format!(
                        "{} free ({})",
                        pages::bytes(free),
                        pages::shown(&dir.to_string_lossy())
                    ),
                    free >= 1 << 30,
                )
            }
            Err(e) => (
                format!("{}: {e}", pages::shown(&dir.to_string_lossy())),
                false,
            ),
        };
        checks.push(pages::Check {
            what: format!("disk space, {what}"),
            value,
            ok,
        });
    }
    page(StatusCode::OK, pages::health(&checks, &csrf))
}

async fn send_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = c.session(&headers) else {
        return not_logged_in();
    };
    let peers: Vec<String> = c
        .book_now()
        .peers()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    page(StatusCode::OK, pages::send(&peers, None, &csrf))
}

/// The Send page's form: the CSRF token first (the page puts it there), the recipients,
/// then the files, each written to the send folder as it streams in and queued only once
/// the whole form was read and checked.
async fn send_files(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    mut form: axum::extract::Multipart,
) -> Response {
    let Some((_, csrf)) = c.session(&headers) else {
        return not_logged_in();
    };
    // The recipients: the address book as it is now (the agent delivers to a peer added
    // since it started, for this page).
    let book = c.book_now();
    let refuse = |status: StatusCode, why: String| {
        let peers: Vec<String> = book.peers().iter().map(|p| p.name.clone()).collect();
        page(status, pages::send(&peers, Some(&why), &csrf))
    };
    let mut token_ok = false;
    let mut to: Vec<(String, String)> = Vec::new();
    let mut uploads: Vec<(String, crate::console::send::Upload)> = Vec::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("the form did not arrive whole: {e}"),
                );
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        if !token_ok {
            // Nothing is read or written before the token checks out.
            let given = if name == "csrf" {
                field.text().await.unwrap_or_default()
            } else {
                String::new()
            };
            if !login::same_secret(&given, &csrf) {
                return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
            }
            token_ok = true;
            continue;
        }
        match name.as_str() {
            "to" => {
                let peer = field.text().await.unwrap_or_default();
                match book.find_by_name(&peer) {
                    Some(p) if !to.iter().any(|(n, _)| *n == p.name) => {
                        to.push((p.name.clone(), p.key.to_string()));
                    }
                    Some(_) => {}
                    None => {
                        return refuse(
                            StatusCode::BAD_REQUEST,
                            format!("{} is not in the address book", pages::shown(&peer)),
                        );
                    }
                }
            }
            "file" => {
                let file_name = field.file_name().unwrap_or_default().to_string();
                if file_name.is_empty() {
                    continue; // the browser sends an empty part when no file was chosen
                }
                if let Err(e) = crate::console::send::check_name(&file_name) {
                    return refuse(StatusCode::BAD_REQUEST, pages::shown(&e.to_string()));
                }
                let mut up = match crate::console::send::Upload::start(&c.home) {
                    Ok(u) => u,
                    Err(e) => return failed("the send folder", e),
                };
                let mut field = field;
                loop {
                    match field.chunk().await {
                        Ok(Some(bytes)) => {
                            if let Err(e) = up.write(&bytes) {
                                return failed("the send folder", e);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return refuse(
                                StatusCode::BAD_REQUEST,
                                format!("the file did not arrive whole: {e}"),
                            );
                        }
                    }
                }
                uploads.push((file_name, up));
            }
            _ => {}
        }
    }
    if !token_ok {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    if to.is_empty() || uploads.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "choose at least one recipient and one file".into(),
        );
    }
    let mut queued = 0usize;
    for (name, up) in uploads {
        let stored = c.names.0.hash(&name).unwrap_or_else(|| name.clone());
        let done = up.finish(&name).and_then(|at| {
            crate::console::send::queue(&c.queue_path, &c.home, &stored, at, &to)
                .map(|ids| (ids, at.0))
        });
        match done {
            Ok((ids, size)) => {
                queued += 1;
                let audit_name = match c.names.0.hash(&name) {
                    Some(h) => format!("#{h}"),
                    None => name.clone(),
                };
                for (id, (_, key)) in ids.iter().zip(&to) {
                    let key = PublicKey::parse(key).ok();
                    let _ = c.audit.agent_item(
                        crate::audit::record::event::ITEM_QUEUED,
                        &audit_name,
                        size,
                        key.as_ref(),
                        id,
                        None,
                    );
                }
            }
            Err(e) => {
                let why = format!(
                    "{queued} file(s) queued; then: {}",
                    pages::shown(&e.to_string())
                );
                return refuse(StatusCode::CONFLICT, why);
            }
        }
    }
    let names: Vec<&str> = to.iter().map(|(n, _)| n.as_str()).collect();
    c.note(&format!(
        "send: {queued} file(s) queued for {}",
        names.join(", ")
    ));
    c.live.changed();
    let mut res = Redirect::to("/outbox").into_response();
    *res.status_mut() = StatusCode::SEE_OTHER;
    res
}
