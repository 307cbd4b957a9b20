//! The command line: `run`, `check-config`, `status`, `log list|show`, `blob get`, `mirror …`,
//! `resolve`, `drain`, `undrain`, `certs …`, `key init`.
//!
//! Commands that talk to a running node take the same `-c FILE` as `run`, read the admin address
//! from it (or, for port 0, from `data_dir/admin.addr`) and use the admin API over HTTP. They
//! never open the data directory of a running node.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::admin::api::{EntryDetail, EntrySummary, StatusView};
use crate::admin::health::NodeState;
use crate::config::Config;
use crate::error::error_chain;
use crate::node::{Node, ADMIN_ADDR_FILE};

/// copyist: a reverse proxy that turns one unmodified CMS into a replicated cluster.
#[derive(Debug, Parser)]
#[command(name = "copyist", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The node's configuration file.
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "COPYIST_CONFIG",
        default_value = "/etc/copyist/proxy.toml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node in the foreground; SIGTERM or SIGINT drains it, then stops it.
    Run(ConfigArg),
    /// Check a configuration file: exit 0 if valid, 1 with every problem listed if not.
    CheckConfig(ConfigArg),
    /// Show the running node's role, health, whether and why it is draining, last sequence
    /// number and write state.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect the log of captured requests.
    #[command(subcommand)]
    Log(LogCommand),
    /// Read blobs (large captured bodies).
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Operate on a mirror through the writer (pause, resume, retry, skip).
    #[command(subcommand)]
    Mirror(MirrorCommand),
    /// Settle an in-doubt entry on the writer: did its origin apply it or not?
    Resolve {
        /// Sequence number of the in-doubt entry.
        seq: u64,
        /// The origin did apply it: ship it to the mirrors.
        #[arg(
            long,
            conflicts_with = "not_applied",
            required_unless_present = "not_applied"
        )]
        applied: bool,
        /// The origin did not apply it: mark it rejected, never replayed.
        #[arg(long)]
        not_applied: bool,
        /// Why (recorded with the entry).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Take the node out of rotation: readiness, /writer, /mirror and /read-only fail (traffic
    /// keeps flowing) until `undrain` or a restart.
    Drain(DrainArgs),
    /// Put a drained node back into rotation (a maintenance file still drains it).
    Undrain(DrainArgs),
    /// Create the cluster CA and node certificates for the replication channel.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Create the key that encrypts this node's log and blobs at rest.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Write a new random key to FILE (mode 0600; never replaces a file), for
    /// `[log] encryption_key_file`. One key per node: nodes do not share keys.
    Init {
        /// The key file to create.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct DrainArgs {
    /// Why (logged with who ran the command).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Debug, Subcommand)]
enum MirrorCommand {
    /// Stop shipping to a mirror (it keeps serving reads, growing lag).
    Pause(MirrorArgs),
    /// Resume shipping to a paused mirror.
    Resume(MirrorArgs),
    /// Retry the entry a halted mirror stopped at (after fixing the cause).
    Retry(MirrorArgs),
    /// Skip exactly the entry a halted mirror stopped at, without applying it.
    Skip {
        #[command(flatten)]
        args: MirrorArgs,
        /// The halted entry's sequence number (required: skipping is never implicit).
        #[arg(long)]
        seq: u64,
    },
}

#[derive(Debug, Args)]
struct MirrorArgs {
    /// The mirror's name, as in the writer's [[mirrors]].
    name: String,
    /// Why (recorded in the log with the time).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create the cluster CA: DIR/ca.pem and DIR/ca.key (keep ca.key off the nodes if you can).
    Init {
        /// Directory for the files.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node certificate signed by the cluster CA: DIR/NAME.pem and DIR/NAME.key.
    Node {
        /// The node's name, exactly as in its [node] name and its peers' config.
        name: String,
        /// Directory holding ca.pem and ca.key; the new files go here too.
        #[arg(long)]
        dir: PathBuf,
        /// Extra host names or IP addresses to put in the certificate.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// List entries, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only entries with a sequence number below this.
        #[arg(long)]
        before: Option<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one entry in full (secret-looking values masked).
    Show {
        /// Sequence number.
        seq: u64,
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BlobCommand {
    /// Write a blob's bytes to stdout (verified against its hash first).
    Get {
        /// The blob's blake3 hash (64 hex digits).
        hash: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs the parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(c) => run_node(&c.config).await,
        Command::CheckConfig(c) => check_config(&c.config),
        Command::Status { config, json } => status(&config.config, json).await,
        Command::Log(LogCommand::List {
            config,
            limit,
            before,
            json,
        }) => log_list(&config.config, limit, before, json).await,
        Command::Log(LogCommand::Show { seq, config, json }) => {
            log_show(&config.config, seq, json).await
        }
        Command::Blob(BlobCommand::Get { hash, config }) => blob_get(&config.config, &hash).await,
        Command::Mirror(m) => mirror(m).await,
        Command::Resolve {
            seq,
            applied,
            not_applied: _,
            reason,
            config,
        } => {
            let body = serde_json::json!({ "reason": reason, "by": who(), "applied": applied });
            post(&config.config, &format!("/api/v1/resolve/{seq}"), body).await
        }
        Command::Drain(a) => drain(&a, "drain").await,
        Command::Undrain(a) => drain(&a, "undrain").await,
        Command::Certs(CertsCommand::Init { dir }) => crate::tls::init_ca(&dir)
            .map(|(cert, key)| println!("created {} and {}", cert.display(), key.display()))
            .map_err(|e| error_chain(&e)),
        Command::Certs(CertsCommand::Node { name, dir, hosts }) => {
            crate::tls::issue_node(&dir, &name, &hosts)
                .map(|(cert, key)| println!("created {} and {}", cert.display(), key.display()))
                .map_err(|e| error_chain(&e))
        }
        Command::Key(KeyCommand::Init { file }) => crate::crypt::NodeKey::init_file(&file)
            .map(|key| {
                println!(
                    "created {} (key id {}); back it up: without it this node's log and blobs \
                     cannot be read",
                    file.display(),
                    key.id()
                )
            })
            .map_err(|e| error_chain(&e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("copyist: {message}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), String>;

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

async fn run_node(path: &Path) -> CliResult {
    let config = load(path)?;
    let node = Node::build(config).await.map_err(|e| error_chain(&e))?;
    let health = node.health();
    let live = node.live();
    let (trigger, shutdown) = crate::shutdown::channel();
    // SIGHUP (config reload) is handled inside the node: see `reload`.
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        // Read now, not at start: a reload may have changed it.
        let delay = live.current().health.shutdown_delay;
        // Readiness fails first, while traffic still flows, so load balancers move away; then
        // the listeners close and in-flight requests finish (Node::run drains them).
        health.set_drained(Some("shutting down".into()));
        crate::systemd::notify("STOPPING=1\nSTATUS=draining before shutdown");
        tracing::info!(?delay, "draining before shutdown");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = crate::shutdown::signal() => tracing::info!("second signal: stopping now"),
        }
        trigger.fire();
    });
    node.run(shutdown).await.map_err(|e| error_chain(&e))
}

fn check_config(path: &Path) -> CliResult {
    load(path)?;
    println!("{}: ok", path.display());
    Ok(())
}

async fn status(path: &Path, json: bool) -> CliResult {
    let body = get(path, "/api/v1/status").await?;
    if json {
        return print_bytes(&body);
    }
    let s: StatusView = parse(&body)?;
    println!("node        {}", s.node);
    println!("role        {}", s.role);
    println!("public      {}", s.public_addr);
    println!("last seq    {}", s.last_seq);
    let writes = if s.fail_closed {
        "REFUSED (storage failed; restart after fixing it)"
    } else if s.role == "mirror" {
        "refused (a mirror's CMS changes only through replay)"
    } else {
        "ok"
    };
    println!("writes      {writes}");
    if let Some(h) = &s.health {
        // The most serious problem, with readiness's reason for it (draining shows below).
        match (&h.reason, h.state) {
            (Some(why), state) if state != NodeState::Draining => {
                println!("health      {}: {why}", state.as_str())
            }
            (_, state) => println!("health      {}", state.as_str()),
        }
        match &h.drain {
            Some(why) => println!("draining    yes: {why}"),
            None => println!("draining    no"),
        }
    }
    if s.role == "mirror" {
        println!("applied     {}", s.applied_seq);
        match &s.halt {
            Some(h) => println!("state       HALTED: {}", h.detail),
            None => println!("state       applying"),
        }
    }
    if !s.mirrors.is_empty() {
        println!();
        println!(
            "{:<16} {:<12} {:>8} {:>8} {:>9}  LAST ERROR / HALT",
            "MIRROR", "STATE", "APPLIED", "LAG", "LAG (S)"
        );
        for m in &s.mirrors {
            let state = if m.paused {
                "paused"
            } else {
                m.status.state.as_str()
            };
            let note = match (&m.status.halt, &m.status.last_error, m.status.blocked_at) {
                (Some(h), _, _) => format!("halted: {}", h.detail),
                (None, _, Some(seq)) => {
                    format!("waiting for in-doubt entry {seq}: copyist resolve {seq}")
                }
                (None, Some(e), None) => e.clone(),
                _ => String::new(),
            };
            println!(
                "{:<16} {:<12} {:>8} {:>8} {:>9.1}  {}",
                m.status.name, state, m.status.applied_seq, m.lag_entries, m.lag_seconds, note
            );
        }
    }
    Ok(())
}

async fn mirror(command: MirrorCommand) -> CliResult {
    let (action, args, seq) = match command {
        MirrorCommand::Pause(a) => ("pause", a, None),
        MirrorCommand::Resume(a) => ("resume", a, None),
        MirrorCommand::Retry(a) => ("retry", a, None),
        MirrorCommand::Skip { args, seq } => ("skip", args, Some(seq)),
    };
    let body = serde_json::json!({ "reason": args.reason, "by": who(), "seq": seq });
    post(
        &args.config.config,
        &format!("/api/v1/mirrors/{}/{action}", args.name),
        body,
    )
    .await
}

/// `copyist drain` / `undrain`: `action` is the admin API's name for it.
async fn drain(args: &DrainArgs, action: &str) -> CliResult {
    let body = serde_json::json!({ "reason": args.reason, "by": who() });
    post(&args.config.config, &format!("/api/v1/{action}"), body).await
}

/// Who runs the command, for audit records: `$USER@hostname`.
fn who() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

async fn post(path: &Path, api: &str, body: serde_json::Value) -> CliResult {
    let text = call(path, http::Method::POST, api, Bytes::from(body.to_string())).await?;
    print!("{}", String::from_utf8_lossy(&text));
    Ok(())
}

async fn log_list(path: &Path, limit: usize, before: Option<u64>, json: bool) -> CliResult {
    let mut query = format!("/api/v1/log?limit={limit}");
    if let Some(b) = before {
        query.push_str(&format!("&before={b}"));
    }
    let body = get(path, &query).await?;
    if json {
        return print_bytes(&body);
    }
    let entries: Vec<EntrySummary> = parse(&body)?;
    println!(
        "{:>8}  {:<9}  {:>6}  {:<7}  {:>10}  {:>9}  TARGET",
        "SEQ", "STATE", "STATUS", "METHOD", "BODY", "MS"
    );
    for e in entries {
        let status = e
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let ms = e
            .duration_us
            .map(|us| format!("{:.1}", us as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>8}  {:<9}  {:>6}  {:<7}  {:>10}  {:>9}  {}",
            e.seq, e.state, status, e.method, e.body_len, ms, e.target
        );
    }
    Ok(())
}

async fn log_show(path: &Path, seq: u64, json: bool) -> CliResult {
    let body = get(path, &format!("/api/v1/log/{seq}")).await?;
    if json {
        return print_bytes(&body);
    }
    let d: EntryDetail = parse(&body)?;
    let s = &d.summary;
    println!("seq         {}", s.seq);
    println!("state       {}", s.state);
    println!("request     {} {} ({})", s.method, s.target, d.version);
    println!("client      {}", d.client_addr);
    println!("request id  {}", d.request_id);
    println!("received    {} (unix ms)", s.received_unix_ms);
    println!(
        "body        {} bytes, {}, blake3 {}",
        s.body_len, d.body_storage, d.body_hash
    );
    println!("headers");
    for (k, v) in &d.headers {
        println!("  {k}: {v}");
    }
    if let Some(form) = &d.form {
        println!("form fields");
        for (k, v) in form {
            println!("  {k} = {v}");
        }
    }
    if let Some(mp) = &d.multipart {
        println!("multipart parts");
        for p in &mp.parts {
            let name = p.name.as_deref().unwrap_or("?");
            match &p.filename {
                Some(f) => println!(
                    "  {name}: file {f:?} {} {} bytes blake3 {}",
                    p.content_type.as_deref().unwrap_or("-"),
                    p.size,
                    p.hash
                ),
                None => println!("  {name} = {}", p.value.as_deref().unwrap_or("")),
            }
        }
        if let Some(err) = &mp.error {
            println!("  (index incomplete: {err})");
        }
    }
    if let Some(h) = &d.halt {
        // An entry keeps its halt as history after a retry or skip moved the mirror on.
        let when = if matches!(s.state.as_str(), "diverged" | "in-doubt") {
            "halt"
        } else {
            "was halted"
        };
        println!("{when:<11} {}", h.detail);
    }
    if let Some(o) = &d.mirror_outcome {
        println!(
            "this mirror {} in {:.1} ms, body {} bytes blake3 {}",
            o.status,
            o.duration_us as f64 / 1000.0,
            o.body_len,
            o.body_digest
        );
        if let Some(l) = &o.location {
            println!("  location: {l}");
        }
        if let Some(e) = &o.error {
            println!("  error: {e}");
        }
    }
    for a in &d.audit {
        println!(
            "operator    {} by {} at {} (unix ms): {}",
            a.action, a.by, a.unix_ms, a.reason
        );
    }
    match &d.outcome {
        None => println!("outcome     none yet"),
        Some(o) => {
            println!(
                "outcome     {} in {:.1} ms",
                o.status,
                o.duration_us as f64 / 1000.0
            );
            if let Some(l) = &o.location {
                println!("  location: {l}");
            }
            for c in &o.set_cookies {
                println!("  set-cookie: {c}");
            }
            println!(
                "  response body {} bytes, blake3 {}",
                o.body_len, o.body_digest
            );
            if let Some(e) = &o.error {
                println!("  error: {e}");
            }
        }
    }
    Ok(())
}

async fn blob_get(path: &Path, hash: &str) -> CliResult {
    let config = load(path)?;
    let addr = admin_addr(&config)?;
    let uri = format!("http://{addr}/api/v1/blob/{hash}");
    let resp = client()
        .get(uri.parse().map_err(|_| format!("invalid hash {hash:?}"))?)
        .await
        .map_err(|e| format!("cannot reach node at {addr}: {}", error_chain(&e)))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&text).trim()
        ));
    }
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading blob: {e}"))?;
        if let Some(data) = frame.data_ref() {
            out.write_all(data)
                .map_err(|e| format!("writing stdout: {e}"))?;
        }
    }
    out.flush().map_err(|e| format!("writing stdout: {e}"))
}

/// The admin address of the node `config` describes.
pub fn admin_addr(config: &Config) -> Result<SocketAddr, String> {
    let mut addr = config.admin.listen;
    if addr.port() == 0 {
        let file = config.node.data_dir.join(ADMIN_ADDR_FILE);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("admin port is 0 and {} is unreadable: {e}", file.display()))?;
        addr = text
            .trim()
            .parse()
            .map_err(|_| format!("{} holds no address", file.display()))?;
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr)
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(path: &Path, api: &str) -> Result<Bytes, String> {
    call(path, http::Method::GET, api, Bytes::new()).await
}

/// One admin API request to the node `path` configures; a non-2xx answer is an error with its text.
async fn call(path: &Path, method: http::Method, api: &str, body: Bytes) -> Result<Bytes, String> {
    let config = load(path)?;
    let addr = admin_addr(&config)?;
    let uri: http::Uri = format!("http://{addr}{api}")
        .parse()
        .map_err(|_| format!("invalid request {api}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<Bytes>>();
    let mut req = http::Request::new(http_body_util::Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    let resp = client.request(req).await.map_err(|e| {
        format!(
            "cannot reach node {} at {addr} (is it running?): {}",
            config.node.name,
            error_chain(&e)
        )
    })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    Ok(body)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("unexpected answer from node: {e}"))
}

fn print_bytes(body: &[u8]) -> CliResult {
    let mut out = std::io::stdout().lock();
    out.write_all(body)
        .and_then(|_| out.write_all(b"\n"))
        .map_err(|e| format!("writing stdout: {e}"))
}
