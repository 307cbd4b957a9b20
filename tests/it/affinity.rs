//! What a mirror sends to its writer besides writes: `[writer] paths`, and every request of a
//! client holding the writer-affinity cookie it got for writing through that mirror. A paused
//! mirror lags, so "the writer answered" shows as state only the writer's CMS has.

use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::Full;

use crate::support::client::Reply;
use crate::support::cluster::{ClusterOpts, TestCluster};
use crate::support::Client;

const COOKIE: &str = "copyist_writer";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn cluster_with(writer_keys: &str) -> TestCluster {
    TestCluster::start_opts(ClusterOpts {
        mirrors: 1,
        writer_keys: writer_keys.to_owned(),
        ..ClusterOpts::default()
    })
    .await
}

async fn send(c: &Client, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let mut req = c.request(method, path);
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    c.send(req.body(Full::default()).unwrap()).await
}

/// `copyist_requests_total{action="forward"}` on a node's admin listener.
async fn forwarded(admin: &Client) -> u64 {
    let text = admin.get("/metrics").await.text();
    let line = text
        .lines()
        .find(|l| l.starts_with(r#"copyist_requests_total{action="forward"}"#))
        .unwrap_or_else(|| panic!("no forward counter in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The `Cookie` header the fixture CMS's `/echo` received, if any.
fn echoed_cookie(r: &Reply) -> Option<String> {
    assert_eq!(r.status, 200, "{}", r.text());
    let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let headers = echo["headers"].as_object().unwrap();
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .map(|(_, v)| v.as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_author_with_the_affinity_cookie_reads_from_the_writer_until_it_expires() {
    // A paused mirror never applies the write: the read-your-writes wait runs out quickly.
    let cluster = cluster_with("read_your_writes_wait = \"200ms\"").await;
    let m1 = cluster.mirrors[0].client();
    let admin = cluster.mirrors[0].node.admin_client();
    cluster.pause(0).await;

    let before = now();
    let r = m1.post_form("/articles", "title=mine-only").await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.seq(), Some(1), "the writer logged it");
    assert_eq!(r.header("x-copyist-applied"), Some("timeout"));
    let set = r
        .header("set-cookie")
        .expect("no affinity cookie")
        .to_owned();
    let (pair, attributes) = set.split_once("; ").unwrap();
    assert_eq!(attributes, "Max-Age=300; Path=/; HttpOnly; SameSite=Lax");
    let expiry: u64 = pair
        .strip_prefix("copyist_writer=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (before + 300..=now() + 300).contains(&expiry),
        "{expiry} is not 5 minutes from now"
    );

    // The mirror has not got the article; its author, sent to the writer, sees it.
    let page = send(&m1, "GET", "/article/1", Some(pair)).await;
    assert_eq!(
        page.status, 200,
        "the cookie did not send the read to the writer"
    );
    assert!(page.text().contains("mine-only"));
    assert!(page.header("set-cookie").is_none(), "only writes renew it");
    let with_others = format!("theme=dark; {pair}; lang=en");
    assert_eq!(
        send(&m1, "GET", "/article/1", Some(&with_others))
            .await
            .status,
        200
    );
    assert_eq!(forwarded(&admin).await, 3, "the write and both reads");

    // Anyone else, and the author once the cookie expired (or was mangled), read locally.
    assert_eq!(send(&m1, "GET", "/article/1", None).await.status, 404);
    let expired = format!("{COOKIE}={}", now() - 1);
    assert_eq!(
        send(&m1, "GET", "/article/1", Some(&expired)).await.status,
        404
    );
    let garbage = format!("{COOKIE}=yes-please");
    assert_eq!(
        send(&m1, "GET", "/article/1", Some(&garbage)).await.status,
        404
    );
    assert_eq!(
        forwarded(&admin).await,
        3,
        "none of those went to the writer"
    );

    cluster.resume(0).await;
    cluster.wait_converged().await;
    assert_eq!(send(&m1, "GET", "/article/1", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cms_sees_the_affinity_cookie_and_other_cookies_arrive_intact() {
    let cluster = cluster_with("").await;
    let m1 = cluster.mirrors[0].client();
    let admin = cluster.mirrors[0].node.admin_client();
    let valid = format!("{COOKIE}={}", now() + 600);
    let expired = format!("{COOKIE}={}", now() - 600);

    // Sent to the writer's CMS by a valid cookie.
    let sent = format!("a=1; {valid}; b=\"x y\";c=3");
    let r = send(&m1, "GET", "/echo", Some(&sent)).await;
    assert_eq!(echoed_cookie(&r).as_deref(), Some("a=1; b=\"x y\";c=3"));
    assert_eq!(
        forwarded(&admin).await,
        1,
        "a valid cookie sends the read to the writer"
    );
    // Alone, it leaves no Cookie header at all.
    let r = send(&m1, "GET", "/echo", Some(&valid)).await;
    assert_eq!(echoed_cookie(&r), None);
    assert_eq!(forwarded(&admin).await, 2);

    // Served by the mirror's own CMS: an expired cookie is removed just the same.
    let sent = format!("{expired}; sess=abc==");
    let r = send(&m1, "GET", "/echo", Some(&sent)).await;
    assert_eq!(echoed_cookie(&r).as_deref(), Some("sess=abc=="));
    assert_eq!(
        forwarded(&admin).await,
        2,
        "an expired cookie reads locally"
    );

    // A write: captured on the writer, and replayed on the mirror, without it either.
    let req = m1
        .request("POST", "/echo")
        .header("cookie", format!("sess=abc; {COOKIE}=garbage"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new("x=1".into()))
        .unwrap();
    let r = m1.send(req).await;
    assert_eq!(r.seq(), Some(1));
    assert_eq!(echoed_cookie(&r).as_deref(), Some("sess=abc"));
    cluster.wait_converged().await;
    let entry = cluster.writer.node.api("/api/v1/log/1").await;
    // `log show` masks cookie values, not names.
    let logged = entry["headers"].to_string();
    assert!(logged.contains("sess="), "{logged}");
    assert!(
        !logged.contains(COOKIE),
        "the log (and so the replay) kept it: {logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_path_is_answered_by_the_writers_cms_whatever_the_method() {
    let cluster = cluster_with("paths = [\"/article/*\", \"/big\"]").await;
    let m1 = cluster.mirrors[0].client();
    cluster.pause(0).await;
    // Written on the writer directly: only the writer's CMS has it.
    let w = cluster.writer.client();
    assert_eq!(
        w.post_form("/articles", "title=writer-only").await.seq(),
        Some(1)
    );

    let page = m1.get("/article/1").await;
    assert_eq!(page.status, 200, "a writer path was read locally");
    assert!(page.text().contains("writer-only"));
    assert!(
        page.header("set-cookie").is_none(),
        "a read earns no affinity"
    );
    let head = send(&m1, "HEAD", "/article/1", None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // The fixture gives a length only to some answers; this one travels as the answer to a POST.
    let head = send(&m1, "HEAD", "/big?bytes=1000", None).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some("1000"),
        "HEAD keeps the writer's length"
    );
    // Other paths still read the mirror's own (lagging) CMS.
    let index = m1.get("/").await;
    assert_eq!(index.status, 200);
    assert!(!index.text().contains("writer-only"), "{}", index.text());
    assert_eq!(forwarded(&cluster.mirrors[0].node.admin_client()).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_writer_down_affinity_reads_are_served_locally_and_writes_get_503() {
    let cluster = cluster_with("paths = [\"/admin*\"]").await;
    let m1 = cluster.mirrors[0].client();
    let r = m1.post_form("/articles", "title=before").await;
    assert_eq!(r.header("x-copyist-applied"), Some("yes"));
    let set = r
        .header("set-cookie")
        .expect("no affinity cookie")
        .to_owned();
    let cookie = set.split_once("; ").unwrap().0.to_owned();
    let TestCluster {
        writer, mirrors, ..
    } = cluster;
    writer.node.stop().await;

    let page = send(&m1, "GET", "/article/1", Some(&cookie)).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("before"));
    let r = m1
        .send(
            m1.request("POST", "/articles")
                .header("cookie", &cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new("title=after".into()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let admin = send(&m1, "GET", "/admin", None).await;
    assert_eq!(admin.status, 503, "a writer path must not fall back");
    assert!(admin.header("retry-after").is_some());
    assert_eq!(mirrors[0].status().await["applied_seq"], 1);
}
