//! `GET /`: the presence page (DESIGN 6), one self-contained HTML document.
//!
//! The HTML, CSS and script live in `src/admin/page/` and are compiled into the binary
//! (`include_str!`), so the page works offline: no CDN, no external fonts, no other request
//! than the admin API's own routes.
//!
//! The document itself holds no data and is served without the token: it shows a login
//! form until `GET /v1/events` accepts the token the operator typed (kept in the tab's
//! `sessionStorage`, sent as `Authorization: Bearer` on every call, never in a URL).
//!
//! Safe by construction: the script renders every peer-supplied string with `textContent`
//! (never `innerHTML`), and the `Content-Security-Policy` allows script and style only from
//! this document's own `<script>`/`<style>` elements, tagged with a nonce that is new on
//! every response, so even an injected element could not run.

use std::sync::LazyLock;

use actix_web::HttpResponse;

const TEMPLATE: &str = include_str!("page/index.html");
const STYLE: &str = include_str!("page/style.css");
const SCRIPT: &str = include_str!("page/app.js");

/// Where the nonce goes in the document.
const NONCE_MARK: &str = "{{NONCE}}";

/// The document with its style and script in place, the nonce still to fill in.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    TEMPLATE
        .replace("/*{{STYLE}}*/", STYLE)
        .replace("/*{{SCRIPT}}*/", SCRIPT)
});

/// The Content-Security-Policy for a document whose own elements carry `nonce`.
pub fn content_security_policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// The document for one response, with `nonce` on its script and style.
pub fn document(nonce: &str) -> String {
    DOCUMENT.replace(NONCE_MARK, nonce)
}

/// `GET /`.
pub(super) async fn page() -> HttpResponse {
    // 122 random bits, hex: a nonce only this response knows.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("content-security-policy", content_security_policy(&nonce)))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header(("cache-control", "no-store"))
        .body(document(&nonce))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_self_contained_and_every_script_and_style_has_the_nonce() {
        let doc = document("abc123");
        assert!(!doc.contains(NONCE_MARK));
        assert!(!doc.contains("{{STYLE}}") && !doc.contains("{{SCRIPT}}"));
        assert_eq!(doc.matches("<script").count(), 1);
        assert_eq!(doc.matches("<style").count(), 1);
        assert!(doc.contains(r#"<script nonce="abc123">"#));
        assert!(doc.contains(r#"<style nonce="abc123">"#));
        // Nothing is fetched from elsewhere.
        assert!(!doc.contains("http://") && !doc.contains("https://"));
        assert!(!doc.contains(" src="));
    }

    #[test]
    fn the_script_never_writes_html() {
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!SCRIPT.contains(forbidden), "app.js uses {forbidden}");
        }
    }

    #[test]
    fn the_policy_allows_only_the_nonce() {
        let csp = content_security_policy("n0");
        assert!(csp.contains("script-src 'nonce-n0';"));
        assert!(!csp.contains("unsafe-inline"));
        assert!(csp.starts_with("default-src 'none'"));
    }
}
