//! The console's pages, rendered on the server: plain HTML forms and tables that read
//! correctly without JavaScript. Every name from a peer or a folder is shown through
//! [`crate::transfer::paths::escape`] (control, bidi and invisible characters visible)
//! and HTML-escaped by the template.
//!
//! The pages with live updates (Outbox, Inbox, Health: no form a refresh could clear)
//! carry `data-live` on their body; the console's script (`console.js`) then follows the
//! update stream. Without the script they read the same, as of when they were loaded.

use maud::{DOCTYPE, Markup, html};

use crate::agent::queue::{Counts, Item, ReceivedItem, State};

/// Items or received files per page.
pub(super) const PAGE: usize = 100;

/// The pages whose content the script refreshes on a queue change.
const LIVE: &[&str] = &["/outbox", "/inbox", "/health"];

/// The pages of the navigation bar.
const NAV: &[(&str, &str)] = &[
    ("/outbox", "Outbox"),
    ("/send", "Send"),
    ("/inbox", "Inbox"),
    ("/peers", "Peers"),
    ("/audit", "Audit"),
    ("/health", "Health"),
];

/// A name as the console shows it.
pub(super) fn shown(name: &str) -> String {
    crate::transfer::paths::escape(name)
}

/// A sentence as the console shows it: control, bidi and invisible characters made
/// visible like [`shown`], a backslash left as it is (the sentence may hold a name that
/// was escaped already).
pub(super) fn visible(text: &str) -> String {
    text.split('\\').map(shown).collect::<Vec<_>>().join("\\")
}

/// Milliseconds since the epoch as RFC 3339 (UTC).
pub(super) fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "?".into())
}

/// A byte count for people.
pub(super) fn bytes(n: u64) -> String {
    crate::transfer::sentences::size(n)
}

/// The frame of every page: title, navigation, logout form, content.
pub(super) fn layout(title: &str, active: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · phi-conduit" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body data-live=[(csrf.is_some() && LIVE.contains(&active)).then_some("1")] {
                header {
                    span.brand { "phi-conduit" }
                    @if csrf.is_some() {
                        nav {
                            @for (href, label) in NAV {
                                a href=(href) class=[(*href == active).then_some("active")] { (label) }
                            }
                        }
                    }
                    @if let Some(csrf) = csrf {
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page that says why nothing is shown (not logged in, a refused link, an error).
pub(super) fn message(title: &str, text: &str) -> Markup {
    layout(
        title,
        "",
        None,
        html! {
            p { (visible(text)) }
            p { "To log in, run " code { "conduit console url" } " on this machine and open the link it prints." }
        },
    )
}

fn pager(base: &str, page: usize, more: bool) -> Markup {
    html! {
        nav.pager {
            @if page > 0 {
                a href={ (base) "?page=" (page - 1) } { "← newer" }
            }
            " page " (page + 1) " "
            @if more {
                a href={ (base) "?page=" (page + 1) } { "older →" }
            }
        }
    }
}

fn state_class(s: State) -> &'static str {
    match s {
        State::Queued => "queued",
        State::Sending => "sending",
        State::Delivered => "ok",
        State::Failed => "bad",
        State::Cancelled => "off",
    }
}

/// The outbox: every item, newest first, a page at a time.
pub(super) fn outbox(
    items: &[Item],
    counts: &Counts,
    progress: &std::collections::HashMap<&str, (u64, u64)>,
    page: usize,
    more: bool,
    csrf: &str,
) -> Markup {
    let body = html! {
        p.counts {
            (counts.queued) " queued · " (counts.sending) " sending · "
            (counts.delivered) " delivered · " (counts.failed) " failed · "
            (counts.cancelled) " cancelled"
            @if let Some(s) = counts.oldest_pending_secs { " · oldest waiting " (s) " s" }
        }
        @if items.is_empty() && page == 0 {
            p { "Nothing was queued yet: files dropped into an outbox folder appear here." }
        } @else {
            table {
                thead { tr { th { "File" } th { "To" } th { "State" } th { "Attempts" } th { "Queued" } th { "Receipt or reason" } th {} } }
                tbody {
                    @for i in items {
                        tr id={ "item-" (i.id) } {
                            td.name { (shown(&i.name)) br; small { (bytes(i.size)) } }
                            td { (shown(&i.recipient)) }
                            td {
                                span class={ "state " (state_class(i.state)) } { (i.state.as_str()) }
                                @if i.state == State::Sending {
                                    @let (done, total) = progress.get(i.id.as_str()).copied().unwrap_or((0, i.size));
                                    br;
                                    progress id={ "progress-" (i.id) } max=(total.max(1)) value=(done) {}
                                    " " small id={ "percent-" (i.id) } { (percent(done, total)) }
                                }
                            }
                            td { (i.attempts) }
                            td { (when(i.created_ms)) }
                            td.detail {
                                @if i.state == State::Delivered { "delivered " (when(i.updated_ms)) br; }
                                @if let Some(r) = &i.receipt { code title=(r) { (r) } }
                                @if let Some(why) = &i.reason { span.reason { (visible(why)) } }
                            }
                            td.actions {
                                @if matches!(i.state, State::Queued | State::Failed) {
                                    form method="post" action={ "/outbox/" (i.id) "/retry" } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button type="submit" { "Retry now" }
                                    }
                                }
                                @if !i.state.is_final() {
                                    form method="post" action={ "/outbox/" (i.id) "/cancel" } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button type="submit" { "Cancel" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (pager("/outbox", page, more))
        }
    };
    layout("Outbox", "/outbox", Some(csrf), body)
}

/// `done` of `total` as a whole percentage.
pub(super) fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "100 %".into();
    }
    format!(
        "{} %",
        u128::from(done.min(total)) * 100 / u128::from(total)
    )
}

/// One received file as the inbox page shows it.
pub(super) struct Arrived<'a> {
    /// The row.
    pub(super) row: &'a ReceivedItem,
    /// The sender's name in the address book, if it is there.
    pub(super) from: Option<&'a str>,
    /// The sender's fingerprint, if its key parses.
    pub(super) fingerprint: Option<String>,
}

/// A file arriving now.
pub(super) struct Incoming {
    /// Its name for live progress updates.
    pub(super) id: String,
    /// The sender's name in the address book, if it is there.
    pub(super) from: Option<String>,
    /// The sender's fingerprint.
    pub(super) fingerprint: String,
    /// The offered name (escaped), unless names are hidden.
    pub(super) name: Option<String>,
    /// Bytes so far and in all.
    pub(super) progress: (u64, u64),
}

/// The inbox: what is arriving now, then what arrived, newest first. Names and places
/// only: no file is opened.
pub(super) fn inbox(
    arriving: &[Incoming],
    rows: &[Arrived<'_>],
    page: usize,
    more: bool,
    csrf: &str,
) -> Markup {
    let body = html! {
        @if !arriving.is_empty() {
            h2 { "Arriving" }
            table.arriving {
                thead { tr { th { "File" } th { "From" } th { "Progress" } } }
                tbody {
                    @for a in arriving {
                        @let (done, total) = a.progress;
                        tr {
                            // (the offered name, escaped by the receiver already)
                            td.name { (a.name.as_deref().unwrap_or("(name hidden)")) br; small { (bytes(total)) } }
                            td { (a.from.as_deref().map_or_else(|| "unknown sender".to_string(), shown)) br; small { code { (a.fingerprint) } } }
                            td {
                                progress id={ "progress-" (a.id) } max=(total.max(1)) value=(done) {}
                                " " small id={ "percent-" (a.id) } { (percent(done, total)) }
                            }
                        }
                    }
                }
            }
            h2 { "Arrived" }
        }
        @if rows.is_empty() && page == 0 {
            p { "Nothing has arrived yet." }
        } @else {
            table {
                thead { tr { th { "File" } th { "From" } th { "Arrived" } th { "Size" } th { "Verified receipt" } th { "Where" } } }
                tbody {
                    @for a in rows {
                        tr {
                            td.name { (shown(&a.row.received.name)) }
                            td {
                                (a.from.map_or_else(|| "unknown sender".to_string(), shown))
                                @if let Some(f) = &a.fingerprint { br; small { code { (f) } } }
                            }
                            td { (when(a.row.at_ms)) }
                            td { (bytes(a.row.received.size)) }
                            td.detail { code title=(a.row.received.hash) { (a.row.received.hash) } }
                            td.detail { (shown(&format!("{}/{}", a.row.received.inbox, a.row.received.name))) }
                        }
                    }
                }
            }
            (pager("/inbox", page, more))
        }
    };
    layout("Inbox", "/inbox", Some(csrf), body)
}

/// One address-book entry as the peers page shows it.
pub(super) struct PeerRow {
    /// Its name.
    pub(super) name: String,
    /// Its fingerprint.
    pub(super) fingerprint: String,
    /// Whether a FIPS pin is known.
    pub(super) fips: bool,
    /// Its path policy, if it has its own.
    pub(super) path: Option<&'static str>,
    /// Its last completed transfer.
    pub(super) seen: Option<crate::agent::queue::Seen>,
    /// Added after the agent started (it uses the peer after its next start).
    pub(super) new: bool,
}

/// The address book, each peer's last transfer, and the form that adds a peer; `note`
/// is the outcome of the last addition (text, whether it was done).
pub(super) fn peers(rows: &[PeerRow], note: Option<(&str, bool)>, csrf: &str) -> Markup {
    let body = html! {
        @if let Some((text, ok)) = note { p class=(if ok { "done" } else { "reason" }) { (text) } }
        table {
            thead { tr { th { "Name" } th { "Fingerprint" } th { "Last transfer" } th { "Path" } th { "FIPS pin" } } }
            tbody {
                @for p in rows {
                    tr {
                        td { (shown(&p.name)) @if p.new { br; small { "added since the agent started: receiving from it needs a restart" } } }
                        td { code { (p.fingerprint) } }
                        td {
                            @match &p.seen {
                                Some(s) => { (s.direction) " " (when(s.at_ms)) }
                                None => { "none yet" }
                            }
                        }
                        td {
                            @if let Some(s) = &p.seen { (s.path) }
                            @if let Some(policy) = p.path { br; small { "policy " (policy) } }
                        }
                        td { @if p.fips { "known" } @else { "none" } }
                    }
                }
            }
        }
        h2 { "Add a peer" }
        form.add method="post" action="/peers/add" {
            input type="hidden" name="csrf" value=(csrf);
            p {
                label { "Name " input type="text" name="name" required maxlength="64" pattern="[A-Za-z0-9._-]+" placeholder="lab-north"; }
                " "
                label { "Public key " input type="text" name="key" required size="64" placeholder="cpk1..."; }
            }
            p { label { "FIPS pin (optional) " input type="text" name="fips" size="64" placeholder="cfp1..."; } }
            p { button type="submit" { "Check the key" } }
            p.counts { "The next step shows the key's fingerprint, to compare with the one the other clinic's machine shows (" code { "conduit id" } ") before it is added." }
        }
    };
    layout("Peers", "/peers", Some(csrf), body)
}

/// The second step of adding a peer: the fingerprint to compare, and the confirmation.
pub(super) fn compare_peer(
    name: &str,
    key: &str,
    fips: &str,
    fingerprint: &str,
    step: &str,
    csrf: &str,
) -> Markup {
    let body = html! {
        p { "Call the person at " strong { (shown(name)) } " on a number you already know (not one from the message that brought the key). Ask them to run " code { "conduit id" } " and read their fingerprint aloud. It must be exactly:" }
        p.fingerprint { code { (fingerprint) } }
        @if !fips.is_empty() {
            p { "Then the FIPS pin: their FIPS build's " code { "conduit id" } " prints it, and it must be exactly (in a FIPS build it is what proves who they are):" }
            p.fingerprint { code { (fips) } }
        }
        p { "If any character differs, do not add this peer: the key is not theirs." }
        form method="post" action="/peers/add" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="name" value=(name);
            input type="hidden" name="key" value=(key);
            input type="hidden" name="fips" value=(fips);
            input type="hidden" name="step" value=(step);
            p { label { input type="checkbox" name="compared" value="yes" required; @if fips.is_empty() { " The fingerprints match, group by group" } @else { " The fingerprints and the FIPS pins match" } } }
            p { button type="submit" { "Add " (shown(name)) } " " a href="/peers" { "Cancel" } }
        }
    };
    layout("Compare the fingerprint", "/peers", Some(csrf), body)
}

/// The audit trail's state and its latest records, newest first.
pub(super) fn audit(
    status: &str,
    ok: bool,
    latest: &[crate::audit::record::Record],
    csrf: &str,
) -> Markup {
    let body = html! {
        p { span class={ "state " (if ok { "ok" } else { "bad" }) } { (if ok { "chain valid" } else { "chain NOT valid" }) } " " (status) }
        p { a href="/audit/export" { "Export every record (JSON lines)" } " · the same as " code { "conduit audit show --json" } " (docs/HIPAA.md)" }
        table {
            thead { tr { th { "#" } th { "Time" } th { "Event" } th { "Peer" } th { "File" } th { "Detail" } } }
            tbody {
                @for r in latest {
                    tr {
                        td { (r.seq) }
                        td { (r.ts) }
                        td { (r.event) @if let Some(role) = &r.role { br; small { (role) } } }
                        td { (r.peer_name.as_deref().or(r.peer.as_deref()).map(shown).unwrap_or_default()) }
                        td.name {
                            @if let Some(p) = &r.path { (shown(p)) }
                            @if let Some(h) = &r.path_hash { small { "name hash " (h.get(..16).unwrap_or(h)) } }
                        }
                        td.detail {
                            @if let Some(n) = r.size.or(r.bytes) { (bytes(n)) " " }
                            @if let Some(h) = r.blake3.as_ref().or(r.sha256.as_ref()) { code { (h) } " " }
                            @if let Some(why) = &r.reason { (shown(why)) }
                        }
                    }
                }
            }
        }
    };
    layout("Audit", "/audit", Some(csrf), body)
}

/// One line of the health page.
pub(super) struct Check {
    /// What.
    pub(super) what: String,
    /// Its value.
    pub(super) value: String,
    /// Whether it is fine.
    pub(super) ok: bool,
}

/// The agent's health: queue depth and age, disk space, the relay.
pub(super) fn health(checks: &[Check], csrf: &str) -> Markup {
    let body = html! {
        table {
            tbody {
                @for c in checks {
                    tr { th { (c.what) } td { span class={ "state " (if c.ok { "ok" } else { "bad" }) } { (if c.ok { "ok" } else { "check" }) } " " (c.value) } }
                }
            }
        }
    };
    layout("Health", "/health", Some(csrf), body)
}

/// The Send page: recipients from the address book and files, in one form that works
/// without JavaScript (a multipart POST); `error` says why the last one was refused.
pub(super) fn send(peers: &[String], error: Option<&str>, csrf: &str) -> Markup {
    let body = html! {
        @if let Some(e) = error { p.reason { (e) } }
        @if peers.is_empty() {
            p { "The address book is empty: add the clinics first (" code { "conduit peers add" } ")." }
        } @else {
            form method="post" action="/send" enctype="multipart/form-data" {
                // First: the server checks the token before it reads anything else.
                input type="hidden" name="csrf" value=(csrf);
                fieldset {
                    legend { "To" }
                    @for p in peers {
                        label.peer { input type="checkbox" name="to" value=(p); " " (shown(p)) }
                    }
                }
                fieldset {
                    legend { "Files" }
                    input type="file" name="file" multiple;
                }
                p { button type="submit" { "Send" } }
                p.counts { "Each file is queued for every recipient chosen and delivered end to end through the relay, like a file dropped into an outbox folder; the Outbox page shows it." }
            }
        }
    };
    layout("Send", "/send", Some(csrf), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_show_bidi_and_controls_and_keep_escaped_names_as_they_are() {
        assert_eq!(
            visible("refused: \u{202e}fdp.exe\nnext"),
            "refused: \\u{202e}fdp.exe\\u{a}next"
        );
        assert_eq!(
            visible("a name sent as \\u{202e}x"),
            "a name sent as \\u{202e}x"
        );
        assert_eq!(shown("\\"), "\\u{5c}");
        assert_eq!(percent(5, 10), "50 %");
        assert_eq!(percent(20, 10), "100 %");
        assert_eq!(percent(0, 0), "100 %");
    }

    #[test]
    fn the_comparison_asks_for_the_fips_pin_when_one_is_given() {
        let plain = compare_peer("north", "cpk1k", "", "ab12-cd34", "s", "t").into_string();
        assert!(plain.contains("ab12-cd34") && !plain.contains("FIPS pin"));
        let fips = compare_peer("north", "cpk1k", "cfp1pin", "ab12-cd34", "s", "t").into_string();
        assert!(
            fips.contains("<code>cfp1pin</code>")
                && fips.contains("The fingerprints and the FIPS pins match"),
            "{fips}"
        );
    }
}
