//! The page of `GET /`: the open incidents as rows rendered on the server, then refreshed
//! every second from `/api/incidents` with the page's own query (`?label=team=payments`)
//! by a few lines of plain script (`page.html`: no framework, nothing fetched from
//! elsewhere).
//!
//! Invariant: every text of a row comes from webhooks and is escaped; only http(s) links
//! become anchors.

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use hookfold_proto::json::incident_to_json;
use hookfold_proto::v1::IncidentEvent;

use super::{FilterQuery, ViewState, bad_request, open_list};

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Only http(s) links become anchors: a `javascript:` URL from a webhook body must not run
/// in an SRE's browser.
fn safe_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

fn row(event: &IncidentEvent) -> String {
    let json = incident_to_json(event);
    let severity = json["severity"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("SEVERITY_")
        .to_ascii_lowercase();
    let since = json["createdAt"].as_str().unwrap_or("").to_owned();
    let links: String = event
        .links
        .iter()
        .filter(|link| safe_url(&link.url))
        .map(|link| {
            format!(
                "<a href=\"{}\" rel=\"noopener noreferrer\">{}</a>",
                escape(&link.url),
                escape(&link.rel)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    // A protobuf map has no order: sorted, so the page reads the same every time.
    let mut labels: Vec<String> = event
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("<div class=\"labels\">{}</div>", escape(&labels.join(" ")))
    };
    format!(
        "<tr data-dedup-key=\"{key}\" class=\"sev-{severity}\"><td class=\"severity\">{severity}</td>\
         <td class=\"summary\">{summary}<div class=\"key\">{key}</div>{labels}</td>\
         <td class=\"since\"><time datetime=\"{since}\">{since}</time></td><td class=\"links\">{links}</td></tr>",
        key = escape(&event.dedup_key),
        summary = escape(&event.summary),
        since = escape(&since),
    )
}

pub(super) async fn page(
    State(state): State<ViewState>,
    Query(query): Query<FilterQuery>,
) -> Response {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(why) => return bad_request(why),
    };
    let (open, ready) = open_list(&state, &filter);
    let rows: String = open.iter().map(row).collect();
    let status = format!(
        "{} open{}",
        open.len(),
        if ready {
            ""
        } else {
            " (not up to date: the view is not ready)"
        }
    );
    // Status first: the rows are text from webhooks (escaped, but they may spell a marker).
    Html(
        PAGE.replace("{{status}}", &status)
            .replace("{{rows}}", &rows),
    )
    .into_response()
}

/// The page (`page.html`): server-rendered rows, refreshed every second from
/// `/api/incidents` by a few lines of plain script (no framework, nothing fetched from
/// elsewhere). `{{status}}` and `{{rows}}` are its only markers, filled in by [`page`].
const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::*;
    use hookfold_proto::v1::Link;

    #[test]
    fn rows_escape_text_and_drop_links_that_are_not_http() {
        let event = IncidentEvent {
            dedup_key: "bk/s/pipeline/<x>".into(),
            summary: "Build \"#1\" <script>alert(1)</script>".into(),
            links: vec![
                Link {
                    rel: "build".into(),
                    url: "https://buildkite.com/acme/x/builds/1".into(),
                },
                Link {
                    rel: "evil".into(),
                    url: "javascript:alert(1)".into(),
                },
            ],
            ..Default::default()
        };
        let html = row(&event);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("href=\"https://buildkite.com/acme/x/builds/1\""));
        assert!(!html.contains("javascript:"), "{html}");
    }
}
