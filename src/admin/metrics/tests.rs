//! The exposition format, escaping, cumulative buckets and the cached blob store size.
#![cfg(test)]

use super::*;

fn metrics() -> (tempfile::TempDir, Metrics) {
    let dir = tempfile::tempdir().unwrap();
    let m = Metrics::new(dir.path().join("blobs"));
    (dir, m)
}

fn events(m: &Metrics) -> String {
    let mut out = Text::default();
    m.write_events(&mut out);
    out.0
}

/// The value of the sample line that starts with `series` (name and labels exactly).
fn value(text: &str, series: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .to_string()
}

/// Checks the 0.0.4 shape: every family has HELP then TYPE once, its samples follow it
/// without another family in between, and every sample parses as `name{labels} value`.
fn check_format(text: &str) {
    let mut declared: Vec<String> = Vec::new();
    let mut current: Option<(String, String)> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            let ty = lines.next().expect("TYPE after HELP");
            let kind = ty
                .strip_prefix(&format!("# TYPE {name} "))
                .unwrap_or_else(|| panic!("TYPE for {name} must follow its HELP: {ty}"));
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{kind}");
            assert!(!declared.contains(&name), "{name} declared twice");
            assert!(name.starts_with("copyist_"), "{name}");
            declared.push(name.clone());
            current = Some((name, kind.to_string()));
            continue;
        }
        let (family, kind) = current.as_ref().expect("a sample before any family");
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let name = series.split('{').next().unwrap();
        let ok = match kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name == format!("{family}{s}")),
            _ => name == family,
        };
        assert!(ok, "sample {name} inside family {family}");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
    }
}

#[test]
fn events_render_in_the_text_format_with_help_and_type() {
    let (_dir, m) = metrics();
    m.request(Action::Capture);
    m.request(Action::Pass);
    m.request(Action::Pass);
    m.halted();
    m.skipped();
    let text = events(&m);
    check_format(&text);
    assert_eq!(
        value(&text, r#"copyist_requests_total{action="pass"}"#),
        "2"
    );
    assert_eq!(
        value(&text, r#"copyist_requests_total{action="capture"}"#),
        "1"
    );
    assert_eq!(
        value(&text, r#"copyist_requests_total{action="error"}"#),
        "0"
    );
    assert_eq!(value(&text, "copyist_halts_total"), "1");
    assert_eq!(value(&text, "copyist_skips_total"), "1");
    assert_eq!(value(&text, "copyist_config_reload_success"), "1");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &text,
            &format!(r#"copyist_build_info{{version="{version}",commit=""}}"#)
        ),
        "1"
    );
    assert!(text.contains("# TYPE copyist_origin_seconds histogram\n"));
    for kind in ["pass", "capture", "replay"] {
        let count = format!(r#"copyist_origin_seconds_count{{path_kind="{kind}"}}"#);
        assert_eq!(value(&text, &count), "0");
    }
}

#[test]
fn histogram_buckets_are_cumulative_and_count_matches_inf() {
    let (_dir, m) = metrics();
    for ms in [0.3, 3.0, 3.0, 5.0, 20_000.0] {
        m.observe_capture(Duration::from_secs_f64(ms / 1000.0));
    }
    let text = events(&m);
    let bucket = |le: &str| {
        value(
            &text,
            &format!(r#"copyist_capture_seconds_bucket{{le="{le}"}}"#),
        )
    };
    assert_eq!(bucket("0.0005"), "1");
    assert_eq!(bucket("0.001"), "1");
    assert_eq!(bucket("0.0025"), "1");
    // 5 ms is on the bound: `le` means less than or equal.
    assert_eq!(bucket("0.005"), "4");
    assert_eq!(bucket("1"), "4");
    assert_eq!(bucket("10"), "4");
    assert_eq!(bucket("+Inf"), "5");
    assert_eq!(value(&text, "copyist_capture_seconds_count"), "5");
    let sum: f64 = value(&text, "copyist_capture_seconds_sum").parse().unwrap();
    assert!((sum - 20.0113).abs() < 1e-6, "{sum}");
    // Bounds appear in increasing order, +Inf last.
    let les: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("copyist_capture_seconds_bucket"))
        .map(|l| l.split('"').nth(1).unwrap())
        .collect();
    assert_eq!(les.len(), BUCKETS.len() + 1);
    assert_eq!(les.last(), Some(&"+Inf"));
}

#[test]
fn labelled_histograms_keep_their_labels_before_le() {
    let (_dir, m) = metrics();
    m.observe_origin(PathKind::Replay, Duration::from_millis(2));
    let text = events(&m);
    assert_eq!(
        value(
            &text,
            r#"copyist_origin_seconds_bucket{path_kind="replay",le="0.0025"}"#
        ),
        "1"
    );
    assert_eq!(
        value(&text, r#"copyist_origin_seconds_count{path_kind="pass"}"#),
        "0"
    );
}

#[test]
fn label_values_and_help_are_escaped() {
    assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
    assert_eq!(escape_label("line\nbreak"), r"line\nbreak");
    assert_eq!(escape_label("mirror-1"), "mirror-1");
    let mut out = Text::default();
    out.family("copyist_x", "gauge", "two\nlines \\ here");
    out.sample("copyist_x", &[("mirror", "we\"ird\\\n")], 1);
    assert_eq!(
        out.0,
        "# HELP copyist_x two\\nlines \\\\ here\n# TYPE copyist_x gauge\ncopyist_x{mirror=\"we\\\"ird\\\\\\n\"} 1\n"
    );
}

#[test]
fn floats_use_prometheus_spellings() {
    assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
    assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
    assert_eq!(Float(f64::NAN).to_string(), "NaN");
    assert_eq!(Float(0.0005).to_string(), "0.0005");
    assert_eq!(Float(2.0).to_string(), "2");
}

#[test]
fn a_failed_reload_clears_success_and_keeps_the_timestamp() {
    let (_dir, m) = metrics();
    let before = value(&events(&m), "copyist_config_reload_timestamp_seconds");
    assert!(before.parse::<f64>().unwrap() > 1.6e9, "{before}");
    m.config_reloaded(false);
    let text = events(&m);
    assert_eq!(value(&text, "copyist_config_reload_success"), "0");
    assert_eq!(
        value(&text, "copyist_config_reload_timestamp_seconds"),
        before
    );
    m.config_reloaded(true);
    assert_eq!(value(&events(&m), "copyist_config_reload_success"), "1");
}

#[tokio::test]
async fn blob_bytes_counts_stored_blobs_and_is_cached() {
    let (dir, m) = metrics();
    let store = crate::blobs::BlobStore::open(&dir.path().join("blobs")).unwrap();
    let mut w = store.writer().unwrap();
    w.write(&[7u8; 1000]).unwrap();
    w.finish().unwrap();
    // An unfinished blob in tmp/ is not stored yet.
    let mut pending = store.writer().unwrap();
    pending.write(&[1u8; 500]).unwrap();
    assert_eq!(m.blob_bytes().await, Some(1000));
    let mut w = store.writer().unwrap();
    w.write(&[8u8; 24]).unwrap();
    w.finish().unwrap();
    // Within BLOB_REFRESH the walk is not repeated.
    assert_eq!(m.blob_bytes().await, Some(1000));
    assert_eq!(dir_bytes(&dir.path().join("blobs")).unwrap(), 1024);
    drop(pending);
}

#[tokio::test]
async fn an_unreadable_blob_dir_leaves_the_metric_out() {
    let (_dir, m) = metrics();
    assert_eq!(m.blob_bytes().await, None);
}
