//! The web dashboard, in a real headless Chromium (crate::browser): every
//! page shows the data of a known database, "Run now" starts a run that
//! then shows as succeeded, replay works from the quarantine page, text a
//! hostile connector controls is shown as text and never runs, and a
//! server with a token sends a browser to sign in.
//!
//! With `SLUICE_SCREENSHOTS_DIR` set, the first test also saves a PNG of
//! each page there (scripts/screenshots.sh makes docs/dashboard-*.png so).

use super::{items_instance, start_flawed_items, Server, DEADLINE, TOKEN};
use crate::browser::Browser;
use crate::common::{guest, Scratch};

use serde_json::Value;
use std::time::Instant;

/// Wait until `done` holds in the browser (or fail, with what it shows).
fn poll_page(b: &Browser, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "waited in vain for {what}; the browser is at {}, showing:\n{}",
            b.url(),
            page_text(b)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn shot(b: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("SLUICE_SCREENSHOTS_DIR") {
        let path = std::path::Path::new(&dir).join(format!("dashboard-{name}.png"));
        std::fs::write(&path, b.screenshot()).unwrap();
    }
}

/// The number of elements `css` picks in the page.
fn count(b: &Browser, css: &str) -> u64 {
    let css = serde_json::to_string(css).unwrap();
    b.eval(&format!("return document.querySelectorAll({css}).length"))
        .as_u64()
        .unwrap()
}

fn page_text(b: &Browser) -> String {
    b.eval("return document.body.innerText")
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn every_page_shows_a_known_database_and_run_now_runs() {
    let s = Scratch::new();
    let fx = start_flawed_items();
    let toml = format!(
        "db = \"sluice.db\"\n\
         [alerts]\nevaluate_every = \"1s\"\n\
         [[alerts.rules]]\nname = \"failing\"\nkind = \"failure_rate\"\nwindow = \"1h\"\n\
         threshold = 0.5\ninstances = [\"broken\"]\n\
         \n[instances.broken]\ncomponent = \"{}\"\nconfig = {{ behaviour = \"error\" }}\n{}",
        guest("misbehave").display(),
        items_instance("shop", &fx, "schedule = \"0 0 1 1 *\"")
    );
    let config_file = s.write("sluice.toml", &toml);
    let server = Server::start(&config_file);
    // The known database: one run of each through the API.
    let (_, body) = server.post("/api/v1/instances/shop/runs", &[]);
    let first = body["run_id"].as_str().unwrap().to_string();
    server.await_run(&first, "succeeded");
    let (_, body) = server.post("/api/v1/instances/broken/runs", &[]);
    let failed = body["run_id"].as_str().unwrap().to_string();
    server.await_run(&failed, "failed");
    server.poll("the failure-rate alert", || {
        let (_, a) = server.get("/api/v1/alerts");
        !a["firing"].as_array().unwrap().is_empty()
    });

    let b = Browser::start();
    let base = format!("http://{}", server.addr);

    // The overview: both instances, their health, the firing alert.
    b.goto(&format!("{base}/"));
    assert_eq!(
        b.texts("#instances tbody tr td:first-child"),
        ["broken", "shop"]
    );
    assert_eq!(
        b.text("tr[data-instance=shop] td:nth-child(2)").as_deref(),
        Some("ok")
    );
    assert_eq!(
        b.text("tr[data-instance=broken] td:nth-child(2)")
            .as_deref(),
        Some("failing")
    );
    assert_eq!(
        b.text("tr[data-instance=shop] td:nth-child(3)").as_deref(),
        Some("0 0 1 1 *")
    );
    assert_eq!(count(&b, "tr[data-instance=shop] svg.spark > polyline"), 1);
    let alerts = b.text(".alerts-firing").unwrap();
    assert!(
        alerts.contains("1 firing alert") && alerts.contains("failing"),
        "{alerts}"
    );
    assert!(
        b.text("tr[data-instance=broken] td:nth-child(4)")
            .unwrap()
            .contains("deliberate connector error"),
        "the failed run's error is on the overview"
    );

    // Run now: the browser lands on the new run, which reloads itself
    // until it has succeeded.
    b.click("tr[data-instance=shop] button");
    poll_page(&b, "the new run's page", || b.url().contains("/runs/"));
    let id = b.url().rsplit('/').next().unwrap().to_string();
    assert_ne!(id, first);
    poll_page(&b, "the run to show as succeeded", || {
        b.text("h1 .badge").as_deref() == Some("succeeded")
    });
    let run = server.await_run(&id, "succeeded");
    assert_eq!(
        b.text("#http-requests").unwrap(),
        run["http_requests"].to_string()
    );
    assert_eq!(b.text("#fuel").unwrap(), run["fuel_used"].to_string());
    assert_eq!(
        count(&b, "meta[http-equiv=refresh]"),
        0,
        "an ended run's page stays"
    );
    // (The new run found nothing new past its cursor: the first run's
    // page shows what it read.)
    b.goto(&format!("{base}/runs/{first}"));
    let (_, run) = server.get(&format!("/api/v1/runs/{first}"));
    let items = &run["streams"]["items"];
    let cells = b.texts("tr[data-stream=items] td");
    assert_eq!(
        cells,
        [
            "items".to_string(),
            items["emitted"].to_string(),
            items["valid"].to_string(),
            items["quarantined"].to_string(),
            items["upserted"].to_string(),
        ],
        "{run}"
    );
    assert_ne!(items["quarantined"], 0, "{run}");
    assert_eq!(
        b.texts("#run-drift li"),
        run["drift"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );
    shot(&b, "run");

    // The instance: both runs, newest first, charted.
    b.goto(&format!("{base}/instances/shop"));
    assert_eq!(
        b.texts("#runs tbody tr td:first-child"),
        [id.clone(), first.clone()]
    );
    // (Children of the chart itself: an SVG element left open would hold
    // the rest.)
    assert_eq!(count(&b, "svg.chart > rect"), 2);
    assert_eq!(count(&b, "svg.chart > polyline"), 1);
    assert!(page_text(&b).contains("runs 1–2 of 2"));
    shot(&b, "instance");
    b.goto(&format!("{base}/instances/shop?status=failed"));
    assert_eq!(count(&b, "#runs tbody tr"), 0);

    // The quarantine: what the API lists, raw records and errors shown;
    // replaying one (still invalid: nothing was fixed) says so.
    let (_, q) = server.get("/api/v1/instances/shop/quarantine");
    let open = q["quarantine"].as_array().unwrap();
    b.goto(&format!("{base}/instances/shop/quarantine"));
    assert_eq!(count(&b, "[data-quarantine]"), open.len() as u64);
    assert!(!open.is_empty());
    let first_q = &open[0];
    let card = b
        .text(&format!("[data-quarantine='{}']", first_q["id"]))
        .unwrap();
    assert!(card.contains(first_q["record"].as_str().unwrap()), "{card}");
    assert!(
        card.contains(first_q["errors"][0]["message"].as_str().unwrap()),
        "{card}"
    );
    shot(&b, "quarantine");
    b.click(&format!("[data-quarantine='{}'] button", first_q["id"]));
    poll_page(&b, "the replay summary", || {
        b.text("#replay-summary").is_some()
    });
    let summary = b.text("#replay-summary").unwrap();
    assert!(
        summary.contains("Examined 1, replayed 0, still invalid 1"),
        "{summary}"
    );

    // Drift: the new field the API reports.
    let (_, drift) = server.get("/api/v1/drift?instance=shop");
    let path = drift["drift"][0]["path"].as_str().unwrap().to_string();
    b.goto(&format!("{base}/drift"));
    assert!(b.texts("#drift tbody td:nth-child(3)").contains(&path));
    shot(&b, "drift");

    // Alerts: the firing rule and its event.
    b.goto(&format!("{base}/alerts"));
    assert!(b.text(".alerts-firing").unwrap().contains("broken"));
    assert!(b.text("#alert-events").unwrap().contains("failing"));
    shot(&b, "alerts");

    // The failed run's page shows its error.
    b.goto(&format!("{base}/runs/{failed}"));
    assert!(b
        .text("#run-error")
        .unwrap()
        .contains("deliberate connector error"));
    b.goto(&format!("{base}/runs/no-such-run"));
    assert!(page_text(&b).contains("run no-such-run not found"));
    b.goto(&format!("{base}/"));
    assert_eq!(count(&b, "tr[data-instance=shop] svg.spark > polyline"), 1);
    shot(&b, "overview");

    drop(b);
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

/// Both payloads bump `window.__pwned` if they ever run.
const SCRIPT: &str = "<script>window.__pwned=(window.__pwned||0)+1</script>";
const IMG: &str = "\"><img src=x onerror=\"window.__pwned=(window.__pwned||0)+1\">";

#[test]
fn text_a_hostile_connector_controls_is_shown_and_never_runs() {
    let s = Scratch::new();
    let hostile = format!("{SCRIPT} {IMG}");
    // A record with a hostile value in a hostile (undeclared: drift) field,
    // and one whose `n` is hostile text (quarantined); a hostile log line;
    // and a hostile error.
    let drifting =
        serde_json::json!({ "id": 1, "n": 2, "label": hostile, IMG: SCRIPT }).to_string();
    let invalid = serde_json::json!({ "id": 2, "n": hostile, "label": "x" }).to_string();
    let config = serde_json::json!({
        "behaviour": "raw",
        "records": [drifting, invalid],
        "log_line": hostile,
        "fail_with": hostile,
    });
    // As an inline TOML table: JSON's strings are TOML's basic strings.
    let inline = toml_inline(&config);
    let toml = format!(
        "db = \"sluice.db\"\n[instances.evil]\ncomponent = \"{}\"\nconfig = {inline}\n",
        guest("misbehave").display()
    );
    let config_file = s.write("sluice.toml", &toml);
    let server = Server::start(&config_file);
    let (_, body) = server.post("/api/v1/instances/evil/runs", &[]);
    let id = body["run_id"].as_str().unwrap().to_string();
    let run = server.await_run(&id, "failed");
    assert!(run["error"].as_str().unwrap().contains(SCRIPT), "{run}");
    let (_, q) = server.get("/api/v1/instances/evil/quarantine");
    assert_eq!(q["quarantine"].as_array().unwrap().len(), 1, "{q}");
    let (_, d) = server.get("/api/v1/drift?instance=evil");
    assert!(d["drift"].to_string().contains("onerror"), "{d}");

    // The pages are served with a policy that allows no script at all.
    let (code, head, _) = server.raw("GET", "/", &[], "");
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{head}"
    );

    let b = Browser::start();
    let base = format!("http://{}", server.addr);
    let run_page = format!("/runs/{id}");
    let pages = [
        // Tables show the start of an error; quarantined records and
        // their errors are JSON (their quotes escaped).
        ("/", vec![SCRIPT]),
        ("/instances/evil", vec![SCRIPT]),
        (run_page.as_str(), vec![SCRIPT, IMG]),
        ("/instances/evil/quarantine", vec![SCRIPT]),
        ("/drift", vec![SCRIPT, IMG]),
        ("/alerts", vec![]),
    ];
    for (path, shown) in pages {
        b.goto(&format!("{base}{path}"));
        // Nothing of it became markup: no script element, no handler ...
        assert_eq!(count(&b, "script"), 0, "{path}: a script element");
        assert_eq!(count(&b, "[onerror]"), 0, "{path}: an onerror handler");
        assert_eq!(count(&b, "img"), 0, "{path}: an injected image");
        // ... nothing ran ...
        assert_eq!(
            b.eval("return window.__pwned === undefined"),
            Value::Bool(true),
            "{path}: the payload ran"
        );
        // ... and the text is there, as text.
        let text = page_text(&b);
        for payload in shown {
            assert!(
                text.contains(payload),
                "{path}: {payload:?} is not shown as text:\n{text}"
            );
        }
    }
    drop(b);
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

/// `v` (a JSON object of strings and arrays) as a TOML inline table.
fn toml_inline(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let fields: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_inline(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(toml_inline).collect();
            format!("[{}]", items.join(", "))
        }
        // A JSON string's escapes are all TOML basic-string escapes.
        other => other.to_string(),
    }
}

#[test]
fn with_a_token_a_browser_signs_in_and_the_api_still_needs_the_header() {
    let s = Scratch::new();
    let toml = format!(
        "db = \"sluice.db\"\n[instances.ok]\ncomponent = \"{}\"\nconfig = {{ behaviour = \"ok\" }}\n",
        guest("misbehave").display()
    );
    let config_file = s.write("sluice.toml", &toml);
    let server = Server::start_with(&config_file, "127.0.0.1:0", &[("SLUICE_API_TOKEN", TOKEN)]);
    let anon = [("Authorization", "none")];
    let (code, head, _) = server.raw("GET", "/instances/ok", &anon, "");
    assert_eq!(code, 303, "{head}");
    assert_eq!(
        header(&head, "location").as_deref(),
        Some("/login"),
        "{head}"
    );
    let form = [
        ("Authorization", "none"),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let (code, _, body) = server.raw("POST", "/login", &form, "token=wrong-token-0123456789");
    assert_eq!(code, 401);
    assert!(body.contains("not this server"), "{body}");
    let (code, head, _) = server.raw("POST", "/login", &form, &format!("token={TOKEN}"));
    assert_eq!(code, 303, "{head}");
    let cookie = header(&head, "set-cookie").unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let with_cookie = [("Authorization", "none"), ("Cookie", session)];
    let (code, _, body) = server.raw("GET", "/instances/ok", &with_cookie, "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Run now"));
    // A cross-site form post is refused even with the cookie.
    let evil = [
        ("Authorization", "none"),
        ("Cookie", session),
        ("Origin", "http://evil.example"),
    ];
    let (code, _, _) = server.raw("POST", "/instances/ok/run", &evil, "");
    assert_eq!(code, 403);
    // The JSON API takes the header, not the cookie.
    let (code, _, _) = server.raw("GET", "/api/v1/instances", &with_cookie, "");
    assert_eq!(code, 401);
    // Run now with the cookie: to the run's page.
    let (code, head, _) = server.raw("POST", "/instances/ok/run", &with_cookie, "");
    assert_eq!(code, 303, "{head}");
    let location = header(&head, "location").unwrap();
    let id = location.strip_prefix("/runs/").unwrap();
    server.await_run(id, "succeeded");
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

/// The value of header `name` in a response's `head`.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}
