//! copyist in front of the PHP fixture CMS, the way a sysadmin deploys it.

use bytes::Bytes;
use http_body_util::Full;

use crate::support::client::multipart;
use crate::support::{Client, PhpCms, Reply, TestNode};

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

fn cookie_of(r: &Reply) -> String {
    let sc = r.header("set-cookie").expect("set-cookie");
    sc.split(';').next().unwrap().to_string()
}

fn csrf_of(html: &str) -> String {
    let at =
        html.find("name=\"csrf\" value=\"").expect("csrf field") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn articles_created_through_copyist_get_ids_logged_in_order() {
    let cms = PhpCms::start();
    let node = TestNode::start(&cms.url()).await;
    let c = node.client();
    for i in 1..=3u64 {
        let r = c
            .post_form("/articles", &format!("title=t{i}&body=b"))
            .await;
        assert_eq!(r.status, 303, "{}", r.text());
        assert_eq!(r.header("location"), Some(format!("/article/{i}").as_str()));
        assert_eq!(r.seq(), Some(i));
    }
    assert_eq!(c.get("/article/2").await.status, 200);
    let r = c.post_form("/articles", "body=no-title").await;
    assert_eq!(r.status, 422);
    assert_eq!(node.api("/api/v1/log/4").await["state"], "rejected");
    let r = c.post_form("/flaky", "").await;
    assert_eq!(r.status, 500);
    assert_eq!(node.api("/api/v1/log/5").await["state"], "rejected");
    let e = node.api("/api/v1/log/1").await;
    assert_eq!(e["state"], "accepted");
    assert_eq!(e["outcome"]["location"], "/article/1");
    let dump = json(&c.get("/dump").await);
    assert_eq!(
        dump["articles"].as_array().unwrap().len(),
        4,
        "3 articles + the flaky row"
    );
}

#[tokio::test]
async fn uploads_reach_php_byte_exact_and_are_indexed() {
    let cms = PhpCms::start();
    let node = TestNode::start(&cms.url()).await;
    let file: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let body = multipart(
        "X1",
        &[("title", "holiday")],
        &[("file", "../../etc/pic.jpg", &file)],
    );
    let c = node.client();
    let req = c
        .request("POST", "/upload")
        .header("content-type", "multipart/form-data; boundary=X1")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let up = json(&r);
    assert_eq!(up["size"], file.len());
    let stored = up["stored_name"].as_str().unwrap().to_string();
    let served = c.get(&format!("/uploads/{stored}")).await;
    assert!(
        served.body == file,
        "PHP stored other bytes than the client sent"
    );
    let e = node.api("/api/v1/log/1").await;
    let parts = e["multipart"]["parts"].as_array().unwrap();
    assert_eq!(
        parts[1]["filename"], "../../etc/pic.jpg",
        "file name kept verbatim for replay"
    );
    assert_eq!(parts[1]["hash"], blake3::hash(&file).to_hex().to_string());
}

#[tokio::test]
async fn login_flow_works_through_copyist_and_the_password_is_masked() {
    let cms = PhpCms::start();
    let node = TestNode::start(&cms.url()).await;
    let c = node.client();
    let form = c.get("/login").await;
    let cookie = cookie_of(&form);
    let csrf = csrf_of(&form.text());
    let req = c
        .request("POST", "/login")
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!(
            "user=admin&password=secret&csrf={csrf}"
        ))))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/admin"));
    let session = cookie_of(&r);
    assert_ne!(session, cookie, "session id regenerated at login");
    let admin = c
        .send(
            c.request("GET", "/admin")
                .header("cookie", &session)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(admin.status, 200);
    assert!(admin.text().contains("admin"));
    let e = node.api("/api/v1/log/1").await;
    let shown = e.to_string();
    assert!(
        !shown.contains("secret\""),
        "password visible in log show: {shown}"
    );
    assert!(!shown.contains(&csrf), "csrf token visible in log show");
    assert_eq!(e["outcome"]["set_cookies"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_cms_sees_the_same_request_directly_and_through_copyist() {
    let cms = PhpCms::start();
    let node = TestNode::start(&cms.url()).await;
    let send = |c: Client| async move {
        let req = c
            .request("POST", "/echo?x=1")
            .header("host", "site.example")
            .header("cookie", "PHPSESSID=abc")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"a=1&b=%C3%A9")))
            .unwrap();
        json(&c.send(req).await)
    };
    let direct = send(Client::new(cms.addr)).await;
    let proxied = send(node.client()).await;
    for key in ["method", "uri", "post", "cookies", "raw_sha256", "raw_len"] {
        assert_eq!(direct[key], proxied[key], "{key} differs");
    }
    let strip = |v: &serde_json::Value| {
        let mut h: Vec<(String, String)> = v["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string()))
            .filter(|(k, _)| !k.starts_with("x-forwarded-") && k != "x-copyist-request-id")
            .collect();
        h.sort();
        h
    };
    assert_eq!(strip(&direct), strip(&proxied));
}
